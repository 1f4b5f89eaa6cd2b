//! A small reader for Python pickles, enough for the CIFAR "python version"
//! batches: dicts, lists, ints, byte strings (Python 2 `str` included) and
//! numpy arrays (kept as their constructor calls, whose state holds the raw
//! bytes). Nothing is executed: globals are just names.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// `callable(*args)`.
    Call(Box<Value>, Box<Value>),
    /// `obj.__setstate__(state)`.
    Build(Box<Value>, Box<Value>),
    Mark,
}

impl Value {
    /// The value under a string or bytes key of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(items) = self else { return None };
        items.iter().find(|(k, _)| k.as_text().as_deref() == Some(key)).map(|(_, v)| v)
    }

    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The longest byte string anywhere inside (a numpy array's data).
    pub fn largest_bytes(&self) -> Option<&[u8]> {
        let children: Vec<&Value> = match self {
            Value::Bytes(b) => return Some(b),
            Value::List(v) | Value::Tuple(v) => v.iter().collect(),
            Value::Call(a, b) | Value::Build(a, b) => vec![a, b],
            Value::Dict(items) => items.iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return None,
        };
        children.into_iter().filter_map(Value::largest_bytes).max_by_key(|b| b.len())
    }
}

/// Parses one pickle.
pub fn parse(data: &[u8]) -> Result<Value> {
    Reader { data, pos: 0, stack: Vec::new(), memo: HashMap::new() }.run()
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).context("truncated pickle")?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').context("truncated pickle")?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().context("malformed pickle: empty stack")
    }

    /// Everything above the last mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| *v == Value::Mark).context("malformed pickle: no mark")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().context("malformed pickle: empty stack")
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => drop(self.take(1)?),         // PROTO
                0x95 => drop(self.take(8)?),         // FRAME
                b'.' => return self.pop(),           // STOP
                b'(' => self.stack.push(Value::Mark),
                b')' => self.stack.push(Value::Tuple(vec![])),
                b']' => self.stack.push(Value::List(vec![])),
                b'}' => self.stack.push(Value::Dict(vec![])),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32 as i64;
                    self.stack.push(Value::Int(v))
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().with_context(|| format!("bad INT '{s}' in pickle"))?),
                    };
                    self.stack.push(v)
                }
                0x8a => {
                    let n = self.uint(1)? as usize;
                    let bytes = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &b) in bytes.iter().enumerate().take(8) {
                        v |= (b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v))
                }
                b'U' | b'C' => self.push_bytes(1)?,
                b'T' | b'B' => self.push_bytes(4)?,
                0x8e => self.push_bytes(8)?,
                0x8c => self.push_str(1)?,
                b'X' => self.push_str(4)?,
                0x8d => self.push_str(8)?,
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?.as_text().unwrap_or_default();
                    let module = self.pop()?.as_text().unwrap_or_default();
                    self.stack.push(Value::Global(module, name))
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self.stack.len().checked_sub(n).context("malformed pickle: short stack")?;
                    let items = self.stack.split_off(at);
                    self.stack.push(Value::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(pairs(items)))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => bail!("malformed pickle: APPEND to a non-list"),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => bail!("malformed pickle: APPENDS to a non-list"),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => bail!("malformed pickle: SETITEM on a non-dict"),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(pairs(items)),
                        _ => bail!("malformed pickle: SETITEMS on a non-dict"),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.stack.push(call(callable, args))
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    self.stack.push(Value::Build(Box::new(obj), Box::new(state)))
                }
                b'q' => {
                    let id = self.uint(1)? as u32;
                    self.memoize(id)?
                }
                b'r' => {
                    let id = self.uint(4)? as u32;
                    self.memoize(id)?
                }
                0x94 => {
                    let id = self.memo.len() as u32;
                    self.memoize(id)?
                }
                b'h' | b'j' => {
                    let id = self.uint(if op == b'h' { 1 } else { 4 })? as u32;
                    let v = self.memo.get(&id).with_context(|| format!("malformed pickle: memo {id} missing"))?.clone();
                    self.stack.push(v)
                }
                other => bail!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1),
            }
        }
    }

    fn push_bytes(&mut self, len_size: usize) -> Result<()> {
        let n = self.uint(len_size)? as usize;
        let v = self.take(n)?.to_vec();
        self.stack.push(Value::Bytes(v));
        Ok(())
    }

    fn push_str(&mut self, len_size: usize) -> Result<()> {
        let n = self.uint(len_size)? as usize;
        let v = String::from_utf8(self.take(n)?.to_vec()).context("malformed pickle: bad UTF-8 string")?;
        self.stack.push(Value::Str(v));
        Ok(())
    }

    fn memoize(&mut self, id: u32) -> Result<()> {
        let v = self.stack.last().context("malformed pickle: empty stack")?.clone();
        self.memo.insert(id, v);
        Ok(())
    }
}

/// A call kept as such, except Python 3's protocol-2 spelling of bytes,
/// `_codecs.encode(text, "latin1")`, which becomes the bytes.
fn call(callable: Value, args: Value) -> Value {
    if let (Value::Global(m, n), Value::Tuple(a)) = (&callable, &args) {
        if m == "_codecs" && n == "encode" {
            if let [Value::Str(text), Value::Str(enc)] = a.as_slice() {
                if enc == "latin1" || enc == "latin-1" {
                    return Value::Bytes(text.chars().map(|c| c as u32 as u8).collect());
                }
            }
        }
    }
    Value::Call(Box::new(callable), Box::new(args))
}

fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_protocol2_dict_of_bytes_ints_and_lists() {
        // Python 2: pickle.dumps({'labels': [3, 300, 70000], 'name': 'ab'}, 2)
        // written by hand: PROTO 2, EMPTY_DICT, BINPUT 0, MARK,
        // SHORT_BINSTRING 'labels', EMPTY_LIST, BINPUT 1, MARK, BININT1 3,
        // BININT2 300, BININT 70000, APPENDS, SHORT_BINSTRING 'name',
        // SHORT_BINSTRING 'ab', SETITEMS, STOP.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend([b'U', 6]);
        p.extend(b"labels");
        p.extend([b']', b'q', 1, b'(', b'K', 3, b'M', 44, 1, b'J']);
        p.extend(70000u32.to_le_bytes());
        p.extend([b'e', b'U', 4]);
        p.extend(b"name");
        p.extend([b'U', 2]);
        p.extend(b"ab");
        p.extend([b'u', b'.']);
        let v = parse(&p).unwrap();
        assert_eq!(v.get("labels"), Some(&Value::List(vec![Value::Int(3), Value::Int(300), Value::Int(70000)])));
        assert_eq!(v.get("name").and_then(Value::as_text).as_deref(), Some("ab"));
        assert!(parse(&p[..p.len() - 3]).is_err());
        assert!(parse(&[0x80, 2, 0xff]).unwrap_err().to_string().contains("unsupported pickle opcode 0xff"));
    }

    #[test]
    fn reads_numpy_arrays_as_python_3_writes_them() {
        // scripts/gen_pickle_cases.py: {b"data": arange(12) as uint8 [2, 6], b"labels": [1, 300], ...}
        for protocol in [2, 4] {
            let path = format!("{}/tests/fixtures/pickles/numpy_p{protocol}.pkl", env!("CARGO_MANIFEST_DIR"));
            let v = parse(&std::fs::read(path).unwrap()).unwrap();
            let data = v.get("data").and_then(Value::largest_bytes).unwrap();
            assert_eq!(data, (0u8..12).collect::<Vec<_>>(), "protocol {protocol}");
            assert_eq!(v.get("labels"), Some(&Value::List(vec![Value::Int(1), Value::Int(300)])));
            let names = match v.get("label_names") {
                Some(Value::List(l)) => l.iter().filter_map(Value::as_text).collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            };
            assert_eq!(names, ["cat", "dog"]);
        }
    }
}
