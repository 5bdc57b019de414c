//! A small YAML reader for kubeconfig files: the subset `kubectl config view --raw` writes (block
//! maps and lists, plain and quoted scalars, `[]`/`{}` and simple one-line flow collections,
//! literal/folded block scalars, comments, `---`) plus JSON documents, turned into
//! `serde_json::Value` so the config loader walks one tree type.
//!
//! Not supported (rejected or read as plain text, never a panic): anchors and aliases, tags,
//! multi-line flow collections in YAML syntax, multi-document files (the first document wins),
//! plain scalars continued over several lines.

use serde_json::{Map, Value};
use std::fmt;

/// Where and why a document could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    /// 1-based line number (0 when unknown).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, YamlError> {
    Err(YamlError {
        line,
        message: message.into(),
    })
}

/// Parse a kubeconfig-style YAML (or JSON) document. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Value, YamlError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON is YAML's flow syntax; serde_json reads the multi-line form our flow parser cannot.
        return serde_json::from_str(text).map_err(|e| YamlError {
            line: e.line(),
            message: e.to_string(),
        });
    }
    let mut p = Parser {
        lines: split_lines(text)?,
        pos: 0,
    };
    if p.lines.is_empty() {
        return Ok(Value::Null);
    }
    let indent = p.lines[0].indent;
    let v = p.node(indent)?;
    if let Some(l) = p.lines.get(p.pos) {
        return err(l.no, "unexpected content (bad indentation?)");
    }
    Ok(v)
}

#[derive(Debug, Clone)]
struct Line {
    no: usize,
    indent: usize,
    text: String,
    /// The raw line (for block scalars, whose content keeps `#` and spacing).
    raw: String,
}

fn split_lines(text: &str) -> Result<Vec<Line>, YamlError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw == "---" || raw.starts_with("--- ") {
            if out.is_empty() {
                continue;
            }
            break; // a second document: ignore the rest
        }
        if raw == "..." {
            break;
        }
        let content = strip_comment(raw);
        let body = content.trim_start_matches(' ');
        if body.trim().is_empty() {
            // Blank lines still matter inside block scalars: keep them with their raw text.
            out.push(Line {
                no,
                indent: usize::MAX,
                text: String::new(),
                raw: raw.to_string(),
            });
            continue;
        }
        if body.starts_with('\t') {
            return err(no, "tab used for indentation");
        }
        let indent = content.len() - body.len();
        out.push(Line {
            no,
            indent,
            text: body.trim_end().to_string(),
            raw: raw.to_string(),
        });
    }
    Ok(out)
}

/// Remove a `#` comment: one at the start or after whitespace, outside quotes.
fn strip_comment(s: &str) -> &str {
    let b = s.as_bytes();
    let (mut in_s, mut in_d) = (false, false);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' if !in_d => in_s = !in_s,
            b'"' if !in_s => in_d = !in_d,
            b'\\' if in_d => i += 1,
            b'#' if !in_s && !in_d && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t') => {
                return &s[..i]
            }
            _ => {}
        }
        i += 1;
    }
    s
}

struct Parser {
    lines: Vec<Line>,
    pos: usize,
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

impl Parser {
    /// Skip blank lines (they only matter inside block scalars).
    fn peek(&mut self) -> Option<&Line> {
        while self.pos < self.lines.len() && self.lines[self.pos].indent == usize::MAX {
            self.pos += 1;
        }
        self.lines.get(self.pos)
    }

    /// The node starting at the current line, whose indentation is `indent`.
    fn node(&mut self, indent: usize) -> Result<Value, YamlError> {
        let Some(line) = self.peek().cloned() else {
            return Ok(Value::Null);
        };
        if is_seq_item(&line.text) {
            self.seq(line.indent)
        } else if split_key(&line.text, line.no)?.is_some() {
            self.map(line.indent)
        } else {
            if line.indent < indent {
                return Ok(Value::Null);
            }
            self.pos += 1;
            scalar_or_flow(&line.text, line.no)
        }
    }

    fn seq(&mut self, indent: usize) -> Result<Value, YamlError> {
        let mut items = Vec::new();
        while let Some(line) = self.peek().cloned() {
            if line.indent != indent || !is_seq_item(&line.text) {
                if line.indent > indent {
                    return err(line.no, "unexpected indentation in list");
                }
                break;
            }
            let rest = line.text[1..].trim_start();
            if rest.is_empty() {
                self.pos += 1;
                items.push(self.child(indent, line.no)?);
                continue;
            }
            // `- key: value` or `- - x`: re-read the rest of the line as a node indented where
            // its text starts, so the following lines of the same item line up with it.
            let offset = line.text.len() - rest.len();
            let l = &mut self.lines[self.pos];
            l.indent = indent + offset;
            l.text = rest.to_string();
            if is_seq_item(rest) || split_key(rest, line.no)?.is_some() {
                items.push(self.node(indent + offset)?);
            } else {
                self.pos += 1;
                items.push(self.inline_value(rest, indent, line.no)?);
            }
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, indent: usize) -> Result<Value, YamlError> {
        let mut map = Map::new();
        while let Some(line) = self.peek().cloned() {
            if line.indent != indent {
                if line.indent > indent {
                    return err(line.no, "unexpected indentation in map");
                }
                break;
            }
            if is_seq_item(&line.text) {
                break;
            }
            let Some((key, rest)) = split_key(&line.text, line.no)? else {
                return err(line.no, "expected `key: value`");
            };
            self.pos += 1;
            let value = if rest.is_empty() {
                // kubectl writes a list under a key at the key's own indentation.
                match self.peek().cloned() {
                    Some(next) if next.indent == indent && is_seq_item(&next.text) => {
                        self.seq(indent)?
                    }
                    _ => self.child(indent, line.no)?,
                }
            } else {
                self.inline_value(&rest, indent, line.no)?
            };
            if map.insert(key.clone(), value).is_some() {
                return err(line.no, format!("duplicate key {key:?}"));
            }
        }
        Ok(Value::Object(map))
    }

    /// The value on the lines after a `key:` or `-` with nothing after it: null, or a node more
    /// indented than its parent.
    fn child(&mut self, parent_indent: usize, _no: usize) -> Result<Value, YamlError> {
        match self.peek() {
            Some(next) if next.indent > parent_indent => {
                let i = next.indent;
                self.node(i)
            }
            _ => Ok(Value::Null),
        }
    }

    fn inline_value(
        &mut self,
        rest: &str,
        parent_indent: usize,
        no: usize,
    ) -> Result<Value, YamlError> {
        if rest.starts_with('|') || rest.starts_with('>') {
            return self.block_scalar(rest, parent_indent, no);
        }
        if rest.starts_with('&') || rest.starts_with('*') || rest.starts_with('!') {
            return err(no, "anchors, aliases and tags are not supported");
        }
        scalar_or_flow(rest, no)
    }

    /// `|` (literal) and `>` (folded) block scalars with optional chomping indicator.
    fn block_scalar(
        &mut self,
        header: &str,
        parent_indent: usize,
        no: usize,
    ) -> Result<Value, YamlError> {
        let folded = header.starts_with('>');
        let chomp = if header.contains('-') {
            '-'
        } else if header.contains('+') {
            '+'
        } else {
            ' '
        };
        let mut raw_lines: Vec<String> = Vec::new();
        let mut block_indent: Option<usize> = None;
        while self.pos < self.lines.len() {
            let l = &self.lines[self.pos];
            let raw_indent = l.raw.len() - l.raw.trim_start_matches(' ').len();
            let blank = l.raw.trim().is_empty();
            if !blank {
                match block_indent {
                    None if raw_indent > parent_indent => block_indent = Some(raw_indent),
                    None => break,
                    Some(bi) if raw_indent < bi => break,
                    _ => {}
                }
            }
            let bi = block_indent.unwrap_or(usize::MAX);
            raw_lines.push(if blank {
                String::new()
            } else {
                l.raw[bi.min(l.raw.len())..].to_string()
            });
            self.pos += 1;
        }
        if block_indent.is_none() && raw_lines.iter().any(|l| !l.is_empty()) {
            return err(no, "block scalar without indented content");
        }
        // Trailing blank lines belong to chomping, not content.
        let mut trailing = 0;
        while raw_lines.last().is_some_and(|l| l.is_empty()) {
            raw_lines.pop();
            trailing += 1;
        }
        let mut s = if folded {
            let mut out = String::new();
            for (i, l) in raw_lines.iter().enumerate() {
                if i > 0 {
                    out.push(if l.is_empty() || raw_lines[i - 1].is_empty() {
                        '\n'
                    } else {
                        ' '
                    });
                }
                out.push_str(l);
            }
            out
        } else {
            raw_lines.join("\n")
        };
        match chomp {
            '-' => {}
            '+' => {
                s.push('\n');
                for _ in 0..trailing {
                    s.push('\n');
                }
            }
            _ => {
                if !s.is_empty() {
                    s.push('\n');
                }
            }
        }
        Ok(Value::String(s))
    }
}

/// Split `key: rest` (or `key:` at the end of the line). `None` when the line is not a map entry.
fn split_key(text: &str, no: usize) -> Result<Option<(String, String)>, YamlError> {
    let b = text.as_bytes();
    if b.is_empty() || b[0] == b'[' || b[0] == b'{' {
        return Ok(None);
    }
    if b[0] == b'"' || b[0] == b'\'' {
        let (key, used) = quoted(text, no)?;
        let after = &text[used..];
        let after_trim = after.trim_start();
        if let Some(rest) = after_trim.strip_prefix(':') {
            if rest.is_empty() || rest.starts_with(' ') {
                return Ok(Some((key, rest.trim().to_string())));
            }
        }
        return Ok(None);
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b':' && (i + 1 == b.len() || b[i + 1] == b' ') {
            let key = text[..i].trim_end().to_string();
            return Ok(Some((key, text[i + 1..].trim().to_string())));
        }
        i += 1;
    }
    Ok(None)
}

/// A quoted scalar at the start of `s`: its value and the number of bytes it used.
fn quoted(s: &str, no: usize) -> Result<(String, usize), YamlError> {
    let mut chars = s.char_indices();
    let Some((_, q)) = chars.next() else {
        return err(no, "empty quoted string");
    };
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if q == '\'' {
            if c == '\'' {
                if s[i + 1..].starts_with('\'') {
                    chars.next();
                    out.push('\'');
                    continue;
                }
                return Ok((out, i + 1));
            }
            out.push(c);
            continue;
        }
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    '"' | '\\' | '/' | ' ' => out.push(e),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut hex = String::new();
                        for _ in 0..n {
                            match chars.next() {
                                Some((_, h)) => hex.push(h),
                                None => return err(no, "truncated escape in quoted string"),
                            }
                        }
                        let cp = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                        match cp {
                            Some(ch) => out.push(ch),
                            None => return err(no, format!("bad escape \\{e}{hex}")),
                        }
                    }
                    other => return err(no, format!("unknown escape \\{other}")),
                }
            }
            _ => out.push(c),
        }
    }
    err(no, "unterminated quoted string")
}

fn scalar_or_flow(text: &str, no: usize) -> Result<Value, YamlError> {
    let t = text.trim();
    if t.starts_with('[') || t.starts_with('{') {
        let mut f = Flow { s: t, i: 0, no };
        let v = f.value()?;
        f.ws();
        if f.i != t.len() {
            return err(no, "trailing characters after flow collection");
        }
        return Ok(v);
    }
    if t.starts_with('"') || t.starts_with('\'') {
        let (s, used) = quoted(t, no)?;
        if !t[used..].trim().is_empty() {
            return err(no, "trailing characters after quoted string");
        }
        return Ok(Value::String(s));
    }
    Ok(plain(t))
}

/// Plain scalar typing, YAML 1.2 core schema (what `kubectl` and Go's yaml read).
fn plain(t: &str) -> Value {
    match t {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => {
            if let Ok(i) = t.parse::<i64>() {
                return Value::from(i);
            }
            if t.bytes()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == b'-' || c == b'.')
            {
                if let Ok(f) = t.parse::<f64>() {
                    if let Some(n) = serde_json::Number::from_f64(f) {
                        return Value::Number(n);
                    }
                }
            }
            Value::String(t.to_string())
        }
    }
}

/// One-line flow collections: `[a, "b", {c: d}]`, `{}`.
struct Flow<'a> {
    s: &'a str,
    i: usize,
    no: usize,
}

impl Flow<'_> {
    fn ws(&mut self) {
        while self.s[self.i..].starts_with(' ') {
            self.i += 1;
        }
    }
    fn value(&mut self) -> Result<Value, YamlError> {
        self.ws();
        let rest = &self.s[self.i..];
        if rest.starts_with('[') {
            self.i += 1;
            let mut items = Vec::new();
            loop {
                self.ws();
                if self.s[self.i..].starts_with(']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                items.push(self.value()?);
                self.ws();
                if self.s[self.i..].starts_with(',') {
                    self.i += 1;
                } else if !self.s[self.i..].starts_with(']') {
                    return err(self.no, "expected `,` or `]` in flow list");
                }
            }
        }
        if rest.starts_with('{') {
            self.i += 1;
            let mut map = Map::new();
            loop {
                self.ws();
                if self.s[self.i..].starts_with('}') {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                let key = match self.value()? {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                self.ws();
                let value = if self.s[self.i..].starts_with(':') {
                    self.i += 1;
                    self.value()?
                } else {
                    Value::Null
                };
                map.insert(key, value);
                self.ws();
                if self.s[self.i..].starts_with(',') {
                    self.i += 1;
                } else if !self.s[self.i..].starts_with('}') {
                    return err(self.no, "expected `,` or `}` in flow map");
                }
            }
        }
        if rest.starts_with('"') || rest.starts_with('\'') {
            let (s, used) = quoted(rest, self.no)?;
            self.i += used;
            return Ok(Value::String(s));
        }
        let end = rest
            .char_indices()
            .find(|&(j, c)| {
                matches!(c, ',' | ']' | '}')
                    || (c == ':' && rest[j + 1..].starts_with([' ', ',', ']', '}']))
                    || (c == ':' && j + 1 == rest.len())
            })
            .map(|(j, _)| j)
            .unwrap_or(rest.len());
        if end == 0 && rest.is_empty() {
            return err(self.no, "unterminated flow collection");
        }
        self.i += end;
        Ok(plain(rest[..end].trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubectl_view_raw_output() {
        let doc = r#"apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTg==
    server: https://127.0.0.1:6443
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    user: kind-kind
    namespace: "default"
  name: kind-kind
current-context: kind-kind
kind: Config
preferences: {}
users:
- name: kind-kind
  user:
    token: 'abc''def'   # a comment
    insecure-skip-tls-verify: true
    exec:
      args: []
      env: null
      port: 8080
"#;
        let v = parse(doc).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(v["clusters"][0]["name"], "kind-kind");
        assert_eq!(v["contexts"][0]["context"]["namespace"], "default");
        assert_eq!(v["current-context"], "kind-kind");
        assert_eq!(v["preferences"], json!({}));
        assert_eq!(v["users"][0]["user"]["token"], "abc'def");
        assert_eq!(v["users"][0]["user"]["insecure-skip-tls-verify"], true);
        assert_eq!(v["users"][0]["user"]["exec"]["args"], json!([]));
        assert_eq!(v["users"][0]["user"]["exec"]["env"], Value::Null);
        assert_eq!(v["users"][0]["user"]["exec"]["port"], 8080);
    }

    #[test]
    fn indented_lists_flow_lists_and_escapes() {
        let doc = "a:\n  - x\n  - \"y\\u00e9\\n\"\n  -   - nested\nb: [one, 'two', {k: v}]\nc: \"has # hash\"\nd: url#frag\n";
        let v = parse(doc).unwrap();
        assert_eq!(v["a"], json!(["x", "yé\n", ["nested"]]));
        assert_eq!(v["b"], json!(["one", "two", {"k": "v"}]));
        assert_eq!(v["c"], "has # hash");
        assert_eq!(v["d"], "url#frag");
    }

    #[test]
    fn list_items_with_maps_and_empty_values() {
        let doc = "env:\n- name: A\n  value: \"1\"\n-\n  name: B\n  value:\nkey_without_value:\n";
        let v = parse(doc).unwrap();
        assert_eq!(
            v["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": null}])
        );
        assert_eq!(v["key_without_value"], Value::Null);
    }

    #[test]
    fn block_scalars() {
        let doc = "lit: |\n  line1\n\n  line2\nfold: >-\n  a\n  b\nafter: x\n";
        let v = parse(doc).unwrap();
        assert_eq!(v["lit"], "line1\n\nline2\n");
        assert_eq!(v["fold"], "a b");
        assert_eq!(v["after"], "x");
    }

    #[test]
    fn json_documents_and_empty() {
        assert_eq!(
            parse("{\n \"a\": [1, 2]\n}\n").unwrap(),
            json!({"a": [1, 2]})
        );
        assert_eq!(parse("# only a comment\n\n").unwrap(), Value::Null);
        assert_eq!(parse("---\na: 1\n---\nb: 2\n").unwrap(), json!({"a": 1}));
    }

    #[test]
    fn errors_name_the_line() {
        for (doc, line) in [
            ("a: 1\n\tb: 2\n", 2),
            ("a: \"open\n", 1),
            ("a: 1\n   b: 2\n", 2),
            ("a: 1\na: 2\n", 2),
            ("a: [1, 2\n", 1),
            ("a: *ref\n", 1),
        ] {
            let e = parse(doc).unwrap_err();
            assert_eq!(e.line, line, "{doc:?}: {e}");
        }
    }
}
