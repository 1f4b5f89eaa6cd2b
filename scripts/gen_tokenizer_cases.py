#!/usr/bin/env python3
"""Generate tests/fixtures/tokenizer_cases.json: a wide corpus for src/tokenizer.rs.

Runs the official CLIP / Long-CLIP tokenizer (the logic of `simple_tokenizer.py`,
copied below, with the vocab from assets/) under the real ftfy on a few hundred
varied strings: mojibake of many kinds, HTML entities, ligatures, fullwidth forms,
control characters, many scripts, contractions, special tokens, and real captions
from Urban1k and COCO. Each row stores `text`, `clean` (the official cleaned and
lowercased string) and `bpe` (ids without SOT/EOT).

    pip install ftfy==6.3.1 regex
    python3 scripts/gen_tokenizer_cases.py
"""
import glob
import gzip
import html
import json
import os
import random
import unicodedata
from functools import lru_cache

import ftfy
import regex as re

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VOCAB = os.path.join(ROOT, "assets", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer_cases.json")
SHARED = os.environ.get("SHARED_DIR", os.path.join(ROOT, "..", "shared"))
if not os.path.isdir(SHARED):
    SHARED = "/work/shared"


# ---- The official tokenizer (openai/CLIP clip/simple_tokenizer.py, MIT) ----

@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    cs = [chr(n) for n in cs]
    return dict(zip(bs, cs))


def get_pairs(word):
    pairs = set()
    prev_char = word[0]
    for char in word[1:]:
        pairs.add((prev_char, char))
        prev_char = char
    return pairs


def basic_clean(text):
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text):
    text = re.sub(r"\s+", " ", text)
    text = text.strip()
    return text


class SimpleTokenizer:
    def __init__(self, bpe_path=VOCAB):
        self.byte_encoder = bytes_to_unicode()
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = merges[1:49152 - 256 - 2 + 1]
        merges = [tuple(merge.split()) for merge in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        for merge in merges:
            vocab.append("".join(merge))
        vocab.extend(["<|startoftext|>", "<|endoftext|>"])
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", re.IGNORECASE)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def clean(self, text):
        return whitespace_clean(basic_clean(text)).lower()

    def encode(self, text):
        bpe_tokens = []
        for token in re.findall(self.pat, self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[bpe_token] for bpe_token in self.bpe(token).split(" "))
        return bpe_tokens


# ---- The corpus ----

BASES = [
    "café", "naïve résumé", "crème brûlée à la mode", "São Paulo", "Zürich", "Ærøskøbing", "Łódź",
    "smörgåsbord", "piñata", "façade", "Ελληνικά", "русский язык", "Україна", "Polska żółć",
    "Türkçe ığüşöç", "Latviešu valoda", "čeština", "日本語のテキスト", "中文描述", "한국어 설명",
    "“smart quotes”", "‘single’", "em—dash en–dash", "ellipsis…", "€100 £50 ¥30", "™ © ® °C ±5%",
    "bullet • point", "🐈 cat", "🚀 rocket", "👍🏽 thumbs", "¡Hola! ¿Qué tal?", "½ cup ¼ tsp",
    "µm × 10²", "Ørsted", "Ñandú", "àquele", "às vezes", "à quel point", "Å",
]

ENCODINGS = [
    "latin-1", "windows-1252", "sloppy-windows-1252", "windows-1251", "sloppy-windows-1251",
    "windows-1250", "windows-1253", "windows-1254", "windows-1257", "iso-8859-2", "macroman", "cp437",
]


def mojibake(text, encoding, errors="strict"):
    return text.encode("utf-8").decode(encoding, errors=errors)


def mojibake_cases(rng):
    cases = []
    for base in BASES:
        for enc in rng.sample(ENCODINGS, 4) + ["windows-1252"]:
            errors = rng.choice(["replace", "ignore"]) if enc in ("windows-1252", "windows-1251", "windows-1253") else "strict"
            try:
                cases.append(mojibake(base, enc, errors) + " in a caption")
            except UnicodeDecodeError:
                pass
    for base in rng.sample(BASES, 15):
        once = mojibake(base, "sloppy-windows-1252")
        cases.append("double: " + mojibake(once, "sloppy-windows-1252"))
        cases.append("mixed: " + base + " and " + once)
        cases.append(once.replace("\xa0", " ") + " (nbsp lost)")
    cases += [
        "voilÃ  le travail", "Ã  la mode", "Ã quele", "fÃ cil", "Ã s vezes", "Ã\xa0 la carte",
        "cafÃ?", "cafÃ© and naÃ¯ve and â€œsmart quotesâ€\x9d", "â€œ like this â€�", "The Mona Lisa doesnâ€™t have eyebrows.",
        "\x93quoted\x94 with C1 controls", "price \x80 5 and \x81 undefined", "I\x92m here", "dots\x85",
        "copyright Â© 2024", "Â£100", "Ã\xa0", "Ã¡rbol", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "Ù…Ø±Ø­Ø¨Ø§", "à¤¨à¤®à¤¸à¥à¤¤à¥‡",
        "ÃƒÂ©tÃƒÂ©", "Ã¢â‚¬Å“quotedÃ¢â‚¬Â\x9d", "Ð´Ð¾Ð±Ñ€Ñ‹Ð¹ Ð´ÐµÐ½ÑŒ",
        "sÃ³", "schÃ¶n", "Ã¼ber", "Ã–sterreich", "â\x80\x99", "âœ” No problems", "&macr;\\_(ã\x83\x84)_/&macr;",
        "ä¸­æ–‡", "æ—¥æœ¬èªž", "í•œêµ\xadì–´", "ðŸ˜€ smile", "ðŸ\x90ˆ cat", "Ã¥Ã¤Ã¶",
        # CESU-8 and Java's C0 80, read as Latin-1 / Windows-1252
        "emoji " + "😀".encode("utf-16-be").decode("utf-16-be", "surrogatepass").encode("utf-8", "surrogatepass").decode("latin-1") + " end",
        "emoji " + "😀".encode("utf-16-be").decode("utf-16-be", "surrogatepass").encode("utf-8", "surrogatepass").decode("sloppy-windows-1252") + " end",
        "null Ã©\xc0\x80 here", "ÃƒÂ\xc0\x80",
        "Ã©\n", "line one Ã©\nline two cafÃ©\n", "\u2018Ã©\u2019",
        "MacRoman: caf√© na√Øve", "cp437: caf├⌐", "Windows-1251: РїСЂРёРІРµС‚", "Ð°Ð±Ð²",
        "Ð", "Ã", "Â", "Ã Ã Ã", "Â Â", "a Ã b", "x Â y", "Ã©Ã©Ã©Ã©Ã©Ã©Ã©Ã©Ã©Ã©",
        "ñ Ñ and ÃÑ", "Ð‘ÐµÐ»Ð°Ñ€ÑƒÑÑŒ", "Î±Î²Î³", "Ã˜", "Ã— Ã·", "Ãƒ", "Ã\x83Â©",
    ]
    return cases


HTML_CASES = [
    "&amp; &lt; &gt; &quot; &apos; &nbsp;x", "&amp;amp; double", "&amp;amp;amp; triple", "&amp;lt;b&amp;gt;",
    "&AMP; &LT; &EACUTE; &NTILDE; &nTILDE; &SZLIG;", "P&EACUTE;REZ BUNDESSTRA&SZLIG;E", "&Jscr;ohn &HilbertSpace;ancock",
    "&checkmark; &hellip; &mdash; &ndash; &lsquo;&rsquo; &ldquo;&rdquo;", "&#39; &#x27; &#X27; &#65;&#x42;&#x0043;",
    "&#0; &#13; &#x80; &#x81; &#x9f; &#1114112; &#xd800; &#x10FFFF; &#xFFFE; &#xFDD0; &#11; &#x1F600;",
    "&#65a; &#x; &#; &#x41 &#65 no semicolons", "&notit; &ampx &amp &copy2024 &lt3 &gtx &eacuteclair",
    "AT&T and R&D and Q&A;", "&unknown; &Foo; &ABC;", "&#9999999999999999999999; big", "&#x110000;",
    "x<y &amp; y>z", "<b>bold</b> &amp; &lt;i&gt;", "a &lt; b\n<p>html</p>\n&amp; after", "first &amp;\nsecond < third\nthird &amp;",
    "&Atilde;&copy; entity mojibake", "&ATILDE;&SUP3;", "&nbsp;&nbsp;&nbsp;spaces", "tab&Tab;and&NewLine;newline",
    "&aacute&eacute&iacute", "&lt;|endoftext|&gt;", "&lt;|startoftext|&gt; via entities", "&#60;|endoftext|&#62;",
    "&amp;#39; &amp;quot;", "&;&&;&&&", "&" * 5, "&#x1b;[31m", "&#128512;", "&sup2;&frac12;&times;",
    "&DiacriticalGrave; &NotNestedGreaterGreater; &nLt; &bne;", "&fjlig; &ThickSpace; &NegativeMediumSpace;",
]

MISC_CASES = [
    "ﬁnance ﬂow ﬀ ﬃ ﬄ ﬅ ﬆ Ĳssel ĳs ǅ ǈ ǋ ŉ", "'ﬅ and 'ſ and <|ﬅartoftext|> and <|ſtartoftext|>",
    "ＬＯＵＤ　ＮＯＩＳＥＳ", "ｈｅｌｌｏ！　１２３ ＡＢＣ ｛｝［］", "ｶﾀｶﾅ Ｕﾀｰﾝ ﾊﾟﾋﾟ", "ﾡﾢﾣ halfwidth hangul", "￠￡￢￣￤￥￦",
    "“quoted” ‘single’ ‛reversed‟ ʼmodifier „low‚", "they’ll we’ve I’m you’d she’s don’t",
    "\x00\x01a\x7f\x0bb\x0c\x1b[31mred\x1b[0m \ufeffbom \u200bzwsp \u206a\u206f \ufff9\ufffa\ufffb\ufffc end",
    "\x1b[1;32mbold green\x1b[m plain \x1b[999X", "\x1b]0;title\x07 not csi",
    "a\r\nb\rc\u2028d\u2029e\x85f", "line1\n\nline2\r\n\r\nline3", "\t leading and trailing \t\n",
    "\x1c\x1d\x1e\x1f separators", "zero\u200dwidth\u200cjoiners \u200e\u200f\u202a\u202e marks",
    "🐈🚀☕✨ 👨‍👩‍👧‍👦 🇺🇸 🏳️‍🌈 👍🏽 ❤️ 🙂🙃", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐛𝐨𝐥𝐝 𝟏𝟐𝟑", "🀄 🃏 🎴 𓀀 𒀀",
    "中文描述：一只猫坐在木地板上。", "日本語の説明：宇宙飛行士が旗の前に立っている。", "한국어 설명도 있습니다.",
    "القط يجلس على الأرض. مرحبا بالعالم", "שלום עולם", "สวัสดีครับ ภาษาไทย", "बिल्ली बैठी है। नमस्ते", "ক্যাট বাংলা",
    "Кошка сидит на деревянном полу.", "ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ Σ ΑΣ. σοφός", "İstanbul IĞDIR ıi", "STRASSE ẞ ß Maße",
    "e\u0301 a\u0300 o\u0308 n\u0303", "a\u0345b and ᾳ and ᾼ", "\u1e9b\u0323 \u0041\u030a \u212b \u2126",
    unicodedata.normalize("NFD", "Crème brûlée, São Paulo, Ñandú, Zürich, Ελληνικά, 한국어"),
    unicodedata.normalize("NFKD", "ﬁ ² ½ Ⅻ ㎏"), "Ⅻ ⅻ ① ⑳ ㈠ ² ³ ¹ ½ ¾ ٣ ١٢٣ ௰ 𝟘",
    "Contractions: it's, they'll, we've, I'm, you'd, she's, don't, won't, can't, IT'S, THEY'LL, o'clock, rock'n'roll, 're' 'd 'll",
    "'s's'S 'tis 'twas y'all ma'am 'm '", "Numbers: 1,234.56 kg, 3.14159, 2024-03-22, 10:45pm, 4K 60fps, 1/250s f/2.8 ISO-400, #42, $99.99, 1e-5, 0x1F",
    "<|startoftext|>", "<|endoftext|>", "<|STARTOFTEXT|> <|EndOfText|>", "a<|endoftext|>b<|startoftext|>c",
    "<|endoftext|><|endoftext|>", "<|startoftext|", "|endoftext|>", "< |endoftext| >", "<|end of text|>",
    "", " ", "   ", "\t\n", "\u3000", "\xa0", "\x1c\x1d", "\n\n\n", "\u2003\u2009\u202f", "\ufeff", "\x00",
    "a\u2003b\u00a0c\u202fd\u205fe\u1680f\u180eg", "word" * 100, "a" * 400, "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "URLs and code: https://example.com/path?query=1&x=2 user@example.org C:\\Users\\me file_name.tar.gz snake_case camelCase",
    "Punctuation runs!!! Really??? Yes... (nested [brackets] {braces}) <angle> --- *** ### @@@ ^^^ ~~~ ``` ''' \"\"\"",
    "UPPERCASE WORDS ARE LOWERCASED BEFORE BPE AND MiXeD CaSe Too", "ÀÉÎÕÜ ÇÑ ÅÆØ", "ǅungla ǈubljana",
    "caf\u00e9 vs cafe\u0301", "Ǆ ǅ ǆ", "\ufffd replacement \ufffd\ufffd", "\ufffd\ufffd", "??? ?Ã? Ã?",
    "Dot ·  middle · and ¨ diaeresis ¸ cedilla", "Box ─│┌┐ ═║╔╗ ▀▄█", "(╯°□°)╯︵ ┻━┻", "¯\\_(ツ)_/¯", "ʕ•ᴥ•ʔ",
    "√±∂≠ macroman-ish", "β€™ βΆ", "вЂ™", "ā€", "Œuvre œuvre œ.", "Ø² ØŠ ÙŸ", "×² ×³", "à²µ",
]


def random_cases(rng, n):
    alphabet = (
        "abcxyzABC  &;#<>'\"0123\n\r\t" + "ÃÂÐØÙÎâ€œ™šž¢£¥©®°±²³µ·»¼½¾¿×÷" + "ÀÉÑàéñüöß" + "\x80\x81\x8d\x90\x9d\x9f\xa0\xad"
        + "ΒΓΟβσВГРСвфЂў" + "“”‘’–—…•" + "│┌═▀" + "ﬁＡ　ｶ" + "\ufffd\x1a\x1b\x00\u200b"
    )
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def caption_cases(rng):
    files = sorted(glob.glob(os.path.join(SHARED, "datasets", "urban1k", "caption", "*.txt")))
    urban = [open(f, encoding="utf-8").read() for f in rng.sample(files, min(50, len(files)))]
    coco = []
    for path in sorted(glob.glob(os.path.join(SHARED, "datasets", "coco-mini", "annotations", "*.json"))):
        coco += [a["caption"] for a in json.load(open(path, encoding="utf-8"))["annotations"]]
    return urban + rng.sample(coco, min(50, len(coco)))


def main():
    rng = random.Random(20240322)
    texts = mojibake_cases(rng) + HTML_CASES + MISC_CASES + random_cases(rng, 120) + caption_cases(rng)
    seen = set()
    texts = [t for t in texts if not (t in seen or seen.add(t))]
    tok = SimpleTokenizer()
    rows = [{"text": t, "clean": tok.clean(t), "bpe": tok.encode(t)} for t in texts]
    changed = sum(r["clean"] != whitespace_clean(r["text"]).lower() for r in rows)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write('{"ftfy": "%s", "rows": [\n' % ftfy.__version__)
        f.write(",\n".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in rows))
        f.write("\n]}\n")
    print(f"wrote {len(rows)} rows to {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes);"
          f" cleaning changed {changed} beyond whitespace and case")


if __name__ == "__main__":
    main()
