//! Text bound for a terminal: control characters in file names, captions
//! and keys are shown as visible escapes, so that a name holding a newline
//! cannot break a table row and one holding an ANSI sequence cannot rewrite
//! the user's terminal. Only human-readable output goes through here; JSON,
//! JSONL, CSV and the files an index or a run writes keep the exact strings;
//! one-item-a-line side files (`OUT.ids.txt`, `skipped.txt`) escape here
//! too, so that a newline in a name cannot split a line.

use std::borrow::Cow;
use std::path::Path;

/// `s` with every character that could move the cursor, change colours or
/// reorder text replaced by a visible escape: `\n`, `\r`, `\t`, the other
/// C0 controls and DEL as `\x01`..`\x1f`, `\x7f` (ESC is `\x1b`), the C1
/// controls U+0080..U+009F and the line/paragraph separators and bidi
/// embeddings, overrides and isolates (U+2028, U+2029, U+202A..U+202E,
/// U+2066..U+2069) as `\u{..}`. All other text (accents, CJK, emoji) is
/// left as it is, and so is a backslash: escaping it would double every
/// backslash of a Windows path, and leaving it makes the function
/// idempotent (escaping twice is escaping once) at the cost of a name that
/// really contains the two characters `\n` reading like an escaped newline.
/// Borrows when there is nothing to escape.
pub fn escape_for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// [`escape_for_terminal`] of a path as `Path::display` shows it.
pub fn path(p: &Path) -> String {
    escape_for_terminal(&p.display().to_string()).into_owned()
}

/// [`escape_for_terminal`] of every line of `s`, keeping the line breaks:
/// for the top-level error printer, where some messages are lists on
/// purpose (a raw newline there can only start a new line, never move the
/// cursor elsewhere or set colours).
pub fn escape_lines(s: &str) -> String {
    s.split('\n').map(escape_for_terminal).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_become_visible_escapes() {
        assert_eq!(escape_for_terminal("a\nb"), "a\\nb");
        assert_eq!(escape_for_terminal("x\r\ty"), "x\\r\\ty");
        assert_eq!(escape_for_terminal("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape_for_terminal("\0\u{7}\u{7f}"), "\\x00\\x07\\x7f");
        assert_eq!(escape_for_terminal("\u{85}\u{9b}"), "\\u{85}\\u{9b}");
        assert_eq!(escape_for_terminal("ab\u{202e}cd\u{2066}\u{2069}\u{2028}\u{2029}"), "ab\\u{202e}cd\\u{2066}\\u{2069}\\u{2028}\\u{2029}");
    }

    #[test]
    fn other_text_is_borrowed_unchanged() {
        for s in ["", "photo.jpg", "café résumé", "東京の夜.png", "🐈‍⬛ cat", "C:\\photos\\a.jpg", "a\\nb", "\u{a0}\u{200d}\u{2030}"] {
            assert!(matches!(escape_for_terminal(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn escaping_is_idempotent() {
        let once = escape_for_terminal("a\n\x1b[1m\u{202e}\\").into_owned();
        assert_eq!(escape_for_terminal(&once), once);
    }

    #[test]
    fn lines_keep_their_breaks() {
        assert_eq!(escape_lines("one \x1b[2J\ntwo\t2"), "one \\x1b[2J\ntwo\\t2");
        assert_eq!(path(Path::new("dir/a\nb.png")), "dir/a\\nb.png");
    }
}

/// Makes a closed stdout (`longclip info ... | head -1`) end the program
/// quietly with status 0, as ripgrep does, instead of the panic `println!`
/// raises on `EPIPE` (Rust ignores SIGPIPE, so writes fail with an error).
/// Other panics keep the default hook.
pub fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && is_broken_pipe_text(msg) {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Whether an error (or one it wraps) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// `std::io::Error`'s text for `EPIPE`, as the print panic carries it.
fn is_broken_pipe_text(msg: &str) -> bool {
    let epipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe).to_string();
    msg.contains("Broken pipe") || msg.contains(&epipe) || msg.contains("os error 32")
}
