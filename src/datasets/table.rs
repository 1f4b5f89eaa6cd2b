//! Generic retrieval sets: a CSV file (header row, RFC 4180 quoting) or a
//! JSON Lines file (one object per line) with an image path and a caption.
//! Rows with the same image path are captions of one image; images keep the
//! order in which they first appear. A JSON Lines caption may also be an
//! array of captions. Image paths are relative to the file's folder (or
//! `--image-root`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, LoadOptions};

pub fn load_csv(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let text = read_file(path)?;
    let rows = parse_csv(&text).with_context(|| path.display().to_string())?;
    let Some((header_line, header)) = rows.first() else {
        bail!("{}: empty file; expected a header row naming the '{}' and '{}' columns", path.display(), opts.image_column, opts.caption_column);
    };
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).with_context(|| {
            format!("{}:{header_line}: no column '{name}' (the header has: {})", path.display(), header.join(", "))
        })
    };
    let (ic, cc) = (column(&opts.image_column)?, column(&opts.caption_column)?);
    let mut builder = Builder::new(path, opts);
    for (line, fields) in &rows[1..] {
        if fields.len() == 1 && fields[0].is_empty() {
            continue; // a blank line
        }
        if fields.len() != header.len() {
            bail!("{}:{line}: {} fields, but the header has {}", path.display(), fields.len(), header.len());
        }
        builder.add(*line, &fields[ic], vec![fields[cc].clone()])?;
    }
    builder.finish()
}

pub fn load_jsonl(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let text = read_file(path)?;
    let mut builder = Builder::new(path, opts);
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{line_no}", path.display());
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{}: malformed JSON: {e}", at()))?;
        let image = value.get(&opts.image_column).and_then(|v| v.as_str());
        let Some(image) = image else {
            bail!("{}: expected an object with a string \"{}\"", at(), opts.image_column);
        };
        let captions = match value.get(&opts.caption_column) {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .with_context(|| format!("{}: \"{}\" must hold strings", at(), opts.caption_column))?,
            _ => bail!("{}: expected a string (or an array of strings) \"{}\"", at(), opts.caption_column),
        };
        builder.add(line_no, image, captions)?;
    }
    builder.finish()
}

fn read_file(path: &Path) -> Result<String> {
    if !path.is_file() {
        bail!("{}: expected the csv / jsonl file itself as --root", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))
}

/// Groups rows by image path, in order of first appearance.
struct Builder<'a> {
    path: &'a Path,
    image_root: PathBuf,
    index: HashMap<String, usize>,
    data: Dataset,
}

impl<'a> Builder<'a> {
    fn new(path: &'a Path, opts: &LoadOptions) -> Self {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let image_root = opts.image_root.clone().unwrap_or(dir);
        Builder { path, image_root, index: HashMap::new(), data: Dataset { split: "all".into(), ..Default::default() } }
    }

    fn add(&mut self, line: usize, image: &str, captions: Vec<String>) -> Result<()> {
        if image.trim().is_empty() {
            bail!("{}:{line}: empty image path", self.path.display());
        }
        if captions.is_empty() || captions.iter().any(|c| c.trim().is_empty()) {
            bail!("{}:{line}: empty caption", self.path.display());
        }
        let i = *self.index.entry(image.to_string()).or_insert_with(|| {
            self.data.images.push(self.image_root.join(image));
            self.data.captions.push(Vec::new());
            self.data.images.len() - 1
        });
        self.data.captions[i].extend(captions);
        Ok(())
    }

    fn finish(self) -> Result<Dataset> {
        if self.data.images.is_empty() {
            bail!("{}: no rows", self.path.display());
        }
        Ok(self.data)
    }
}

/// RFC 4180 records with the line each starts on: fields separated by
/// commas, optionally quoted ("" is a quote inside quotes, and quoted fields
/// may span lines); \n or \r\n ends a record.
pub fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    parse_delimited(text, ',')
}

/// Like [`parse_csv`] with another field separator (a tab for the
/// tab-separated files pandas writes with `to_csv(sep='\t')`).
pub fn parse_delimited(text: &str, sep: char) -> Result<Vec<(usize, Vec<String>)>> {
    let mut rows = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let (mut line, mut start_line) = (1, 1);
    let mut chars = text.strip_prefix('\u{feff}').unwrap_or(text).chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if at_field_start => {
                let quote_line = line;
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            field.push(ch);
                        }
                        None => bail!("line {quote_line}: unterminated quoted field"),
                    }
                }
                match chars.peek() {
                    None | Some('\n') | Some('\r') => {}
                    Some(&c) if c == sep => {}
                    Some(other) => bail!("line {line}: unexpected '{other}' after a closing quote"),
                }
                at_field_start = false;
            }
            c if c == sep => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                rows.push((start_line, std::mem::take(&mut fields)));
                line += 1;
                start_line = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        rows.push((start_line, fields));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(rows: Vec<(usize, Vec<String>)>) -> Vec<(usize, Vec<&'static str>)> {
        rows.into_iter().map(|(l, f)| (l, f.into_iter().map(|s| &*s.leak()).collect())).collect()
    }

    #[test]
    fn csv_quotes_commas_newlines_and_crlf() {
        let text = "image,caption\r\na.jpg,\"a, b\"\r\n\"b.jpg\",\"say \"\"hi\"\"\nthen\"\nc.jpg,plain";
        let rows = plain(parse_csv(text).unwrap());
        assert_eq!(
            rows,
            [
                (1, vec!["image", "caption"]),
                (2, vec!["a.jpg", "a, b"]),
                (3, vec!["b.jpg", "say \"hi\"\nthen"]),
                (5, vec!["c.jpg", "plain"]),
            ]
        );
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = parse_csv("a,b\nx,\"open\n\n").unwrap_err().to_string();
        assert!(err.contains("line 2: unterminated"), "{err}");
        let err = parse_csv("a,b\n\"x\"y,z\n").unwrap_err().to_string();
        assert!(err.contains("line 2: unexpected 'y'"), "{err}");
    }
}
