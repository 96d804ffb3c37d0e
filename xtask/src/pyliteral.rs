//! Python 2 source read as Python reads it, for the settings files: statements as its
//! tokenizer ends them, one-line string literals with Python 2's escapes, and literals written
//! so that Python reads back the very value. Used by `settings.rs` (SECRET_KEY, the switch) and
//! `zone.rs` (TIME_ZONE).

use anyhow::{anyhow, bail, Result};

/// A Python 2 string value: a byte string (`'…'`, `"…"`, `b'…'`, `r'…'`) or a unicode string
/// (`u'…'`). Kept as such, so that it is written back as the identical value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PyStr {
    Bytes(Vec<u8>),
    Unicode(String),
}

impl PyStr {
    /// The Python literal that reads back as this very value.
    pub fn literal(&self) -> String {
        match self {
            PyStr::Bytes(bytes) => py_bytes(bytes),
            PyStr::Unicode(text) => py_unicode(text),
        }
    }
}

/// A Python 2 byte-string literal: ASCII only, everything else escaped.
pub fn py_str(value: &str) -> String {
    py_bytes(value.as_bytes())
}

/// A Python 2 byte-string literal holding exactly `bytes` (Python 3 reads the same escapes as
/// the code points 0-255).
fn py_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("'");
    for &byte in bytes {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('\'');
    out
}

/// A Python 2 unicode literal holding exactly `value`: ASCII only, everything else escaped.
fn py_unicode(value: &str) -> String {
    let mut out = String::from("u'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            ' '..='~' => out.push(c),
            c if u32::from(c) < 0x100 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if u32::from(c) < 0x10000 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out.push('\'');
    out
}

/// One logical line of Python source: a statement, over several physical lines when brackets,
/// a backslash or a triple-quoted string carry it on.
pub struct Statement<'a> {
    /// The number of its first physical line, from 1.
    pub line: usize,
    /// Its text as written, comments included, without the final line break.
    pub text: &'a str,
    /// Its text outside comments (strings included), to look for a name in.
    pub code: String,
}

/// Splits Python source into statements, the way Python's tokenizer ends them: at a line break
/// outside brackets, strings and backslash continuations.
pub fn statements(source: &str) -> Vec<Statement<'_>> {
    let mut out = Vec::new();
    let mut open = Open { start: 0, line: 1 };
    let mut line = 1;
    let mut depth = 0usize;
    let mut code = String::new();
    let mut chars = source.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '#' => while chars.next_if(|&(_, c)| c != '\n').is_some() {},
            '\'' | '"' => {
                code.push(c);
                let triple = source[at..].starts_with(&c.to_string().repeat(3));
                if triple {
                    chars.next();
                    chars.next();
                }
                while let Some((at, d)) = chars.next() {
                    code.push(d);
                    match d {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                line += usize::from(e == '\n');
                                code.push(e);
                            }
                        }
                        '\n' if triple => line += 1,
                        // An unterminated string ends with its line (a syntax error to Python).
                        '\n' => {
                            code.pop();
                            line += 1;
                            if depth == 0 {
                                open = open.end(&mut out, source, at, line, &mut code);
                            }
                            break;
                        }
                        d if d == c && !triple => break,
                        d if d == c && source[at..].starts_with(&c.to_string().repeat(3)) => {
                            chars.next();
                            chars.next();
                            break;
                        }
                        _ => {}
                    }
                }
            }
            '\\' if chars.next_if(|&(_, c)| c == '\n').is_some() => line += 1,
            '(' | '[' | '{' => {
                depth += 1;
                code.push(c);
            }
            ')' | ']' | '}' => {
                depth = depth.saturating_sub(1);
                code.push(c);
            }
            '\n' => {
                line += 1;
                if depth == 0 {
                    open = open.end(&mut out, source, at, line, &mut code);
                } else {
                    code.push(' ');
                }
            }
            c => code.push(c),
        }
    }
    if open.start < source.len() {
        out.push(Statement {
            line: open.line,
            text: &source[open.start..],
            code,
        });
    }
    out
}

/// Where the statement being read began: its byte offset and line.
#[derive(Clone, Copy)]
struct Open {
    start: usize,
    line: usize,
}

impl Open {
    /// Ends the statement at the line break at `at` (its code read so far in `code`); the next
    /// begins after it, on `line`.
    fn end<'a>(
        self,
        out: &mut Vec<Statement<'a>>,
        source: &'a str,
        at: usize,
        line: usize,
        code: &mut String,
    ) -> Open {
        out.push(Statement {
            line: self.line,
            text: &source[self.start..at],
            code: std::mem::take(code),
        });
        Open {
            start: at + 1,
            line,
        }
    }
}

/// Whether `code` has `name` as a whole word (so `SENTRY_SECRET_KEY` is not `SECRET_KEY`).
fn mentions(code: &str, name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(name).any(|(at, found)| {
        !code[..at].ends_with(word) && !code[at + found.len()..].starts_with(word)
    })
}

/// The value `file` (its text: `source`) gives `name`, read from top-level statements of the
/// form `NAME = <string literal>` (the last one wins, as in Python), with either quote, any
/// spacing around `=`, Python 2 escapes, a `u`, `b` or `r` prefix and a trailing comment. Any
/// other statement that mentions `name` outside a comment (an expression, a triple-quoted or
/// continued string, `os.environ[...]`, an indented assignment) is refused: never guessed.
pub fn literal_assignment(source: &str, name: &str, file: &str) -> Result<Option<PyStr>> {
    let mut value = None;
    for statement in statements(source) {
        if !mentions(&statement.code, name) {
            continue;
        }
        match assignment(statement.text, name) {
            Some(found) => value = Some(found),
            None => bail!(
                "{file} sets {name} in a form this tool cannot read (line {}), \
                 and it will not guess it or replace it: write it on one line as \
                 {name} = '...' (a plain string literal) and try again",
                statement.line
            ),
        }
    }
    Ok(value)
}

/// The text value of `name` in a settings file (see [`literal_assignment`]); `None` when the
/// file does not set it.
pub fn string_setting(source: &str, name: &str, file: &str) -> Result<Option<String>> {
    Ok(match literal_assignment(source, name, file)? {
        None => None,
        Some(PyStr::Unicode(text)) => Some(text),
        Some(PyStr::Bytes(bytes)) => Some(
            String::from_utf8(bytes)
                .map_err(|_| anyhow!("{file} sets {name} to bytes that are not UTF-8 text"))?,
        ),
    })
}

/// The value of `NAME = <literal>  # comment`, written from the first column.
fn assignment(text: &str, name: &str) -> Option<PyStr> {
    let blank = [' ', '\t', '\x0c', '\r'];
    let value = text
        .strip_prefix(name)?
        .trim_start_matches(blank)
        .strip_prefix('=')
        .filter(|it| !it.starts_with('='))?
        .trim_start_matches(blank);
    let (key, rest) = string_literal(value)?;
    let rest = rest.trim_start_matches(blank);
    (rest.is_empty() || rest.starts_with('#') && !rest.contains('\n')).then_some(key)
}

/// A one-line Python 2 string literal at the start of `text`, and the text after it.
fn string_literal(text: &str) -> Option<(PyStr, &str)> {
    let quote_at = text.find(['\'', '"'])?;
    let (unicode, raw) = match &text[..quote_at] {
        "" | "b" | "B" => (false, false),
        "u" | "U" => (true, false),
        "r" | "R" | "br" | "bR" | "Br" | "BR" => (false, true),
        // `ur'…'` still reads `\u` escapes in Python 2: not a plain literal.
        _ => return None,
    };
    let quote = text[quote_at..].chars().next()?;
    let body = &text[quote_at + 1..];
    if body.starts_with(&quote.to_string().repeat(2)) {
        return None; // triple-quoted
    }
    let mut value = String::new();
    // Byte strings may hold any byte: kept as chars 0-255, turned into bytes at the end.
    let mut chars = body.char_indices();
    let push_source_char = |value: &mut String, c: char| {
        if unicode {
            value.push(c);
        } else {
            let mut buf = [0u8; 4];
            value.extend(c.encode_utf8(&mut buf).bytes().map(char::from));
        }
    };
    while let Some((at, c)) = chars.next() {
        match c {
            c if c == quote => {
                let key = if unicode {
                    PyStr::Unicode(value)
                } else {
                    PyStr::Bytes(value.chars().map(|c| c as u8).collect())
                };
                return Some((key, &body[at + c.len_utf8()..]));
            }
            '\n' | '\r' => return None,
            '\\' => {
                let (_, e) = chars.next()?;
                if raw {
                    if e == '\n' || e == '\r' {
                        return None;
                    }
                    value.push('\\');
                    push_source_char(&mut value, e);
                    continue;
                }
                let escaped = match e {
                    '\\' | '\'' | '"' => e,
                    'a' => '\x07',
                    'b' => '\x08',
                    'f' => '\x0c',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\x0b',
                    '0'..='7' => {
                        let mut code = e.to_digit(8)?;
                        for _ in 0..2 {
                            match chars.clone().next().and_then(|(_, d)| d.to_digit(8)) {
                                Some(digit) => {
                                    code = code * 8 + digit;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        if !unicode && code > 0xff {
                            return None;
                        }
                        char::from_u32(code)?
                    }
                    'x' | 'u' | 'U' if e == 'x' || unicode => {
                        let digits = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = (0..digits)
                            .map(|_| chars.next().map(|(_, d)| d))
                            .collect::<Option<_>>()?;
                        if !hex.chars().all(|d| d.is_ascii_hexdigit()) {
                            return None;
                        }
                        char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                    }
                    // `\N{name}`, and a backslash ending the line: not plain one-line literals.
                    'N' if unicode => return None,
                    '\n' | '\r' => return None,
                    // Python keeps unknown escapes as they are.
                    e => {
                        value.push('\\');
                        push_source_char(&mut value, e);
                        continue;
                    }
                };
                value.push(escaped);
            }
            c => push_source_char(&mut value, c),
        }
    }
    None
}

/// A statement that could set names no reader of the text can see: a star import, `execfile`,
/// `exec`, or writes through `globals()`, `locals()`, `vars()`, `setattr` or `__dict__`.
pub fn sets_names_dynamically(code: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let has_word = |name: &str| {
        code.match_indices(name).any(|(at, _)| {
            !code[..at].ends_with(word) && !code[at + name.len()..].starts_with(word)
        })
    };
    let star_import = code
        .match_indices("import")
        .any(|(at, name)| code[at + name.len()..].trim_start().starts_with('*'));
    star_import
        || [
            "execfile", "exec", "globals", "locals", "vars", "setattr", "__dict__",
        ]
        .into_iter()
        .any(has_word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals_are_read_as_python_2_reads_them() {
        let read = |source: &str| {
            literal_assignment(source, "SECRET_KEY", "settings_local.py")
                .unwrap()
                .unwrap()
        };
        let bytes = |it: &[u8]| PyStr::Bytes(it.to_vec());
        assert_eq!(read("SECRET_KEY = 'a'"), bytes(b"a"));
        assert_eq!(read("SECRET_KEY='a' # it's \"quoted\"\r\n"), bytes(b"a"));
        assert_eq!(read("SECRET_KEY\t=  \"a\\'b\\\"\"\n"), bytes(b"a'b\""));
        assert_eq!(
            read(r"SECRET_KEY = 'a\x41\101\n\t\q\0'"),
            bytes(b"aAA\n\t\\q\0")
        );
        assert_eq!(read(r"SECRET_KEY = b'\xff\\'"), bytes(b"\xff\\"));
        assert_eq!(read(r"SECRET_KEY = r'a\n\''"), bytes(b"a\\n\\'"));
        assert_eq!(read("SECRET_KEY = 'é'"), bytes("é".as_bytes()));
        assert_eq!(
            read(r"SECRET_KEY = u'\xe9\u20ac\U0001f600\q'"),
            PyStr::Unicode("é€😀\\q".to_string())
        );
        // The last top-level assignment wins, as in Python; brackets, quotes and `#` in
        // strings do not confuse where statements start.
        assert_eq!(
            read("SECRET_KEY = 'a'\nX = ('#', \"'(\",\n     'y')\nSECRET_KEY = 'c'\n"),
            bytes(b"c")
        );
        // Any mention outside a comment, even in a string, is not guessed at.
        assert!(
            literal_assignment("X = '''\nSECRET_KEY = 'b'\n'''\n", "SECRET_KEY", "f.py").is_err()
        );
    }
}
