//! The files behind gmond's parsed configuration: which files an `include`
//! reads, where each `module { … }` block was written, and which file and
//! line holds a parse error.
//!
//! libconfuse (3.3) cannot say where a module block came from: every
//! `modules { }` block is merged into the one `modules` section that exists
//! before parsing starts, so the `module` sections inherit its file name,
//! which is none; and its line counts are kept per section and go wrong
//! across includes and comments (observed: a block in the second file of a
//! glob reported two lines past its closing brace). So the files are read
//! again here, following gmond's `include` rules, and the blocks found in
//! their text are matched, in order, to the parsed ones. A file this scanner
//! reads differently from libconfuse only costs the locations: when the
//! names do not match one for one, no block gets one.
//!
//! The scanner only finds sections, options and `include`s; it checks
//! nothing. Whether a file is valid is libconfuse's to say
//! ([`gmond_config::try_parse`]), and [`locate_parse_error`] asks it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::gmond_config::{self, ModuleBlock, Origin, ParserVerdict};

/// libconfuse's include depth limit (`MAX_INCLUDE_DEPTH`); deeper is a
/// parse error for gmond, and a loop of includes must end somewhere here.
const MAX_DEPTH: usize = 10;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A quoted or bare string: libconfuse does not tell them apart.
    Word(String),
    Open,
    Close,
    LParen,
    RParen,
    /// `=` or `+=`.
    Equals,
    Comma,
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Characters that end a bare word (libconfuse's lexer: blanks, comment
/// and quote starts, punctuation; `*` only ever appears inside comments).
/// A `/` belongs to a word only when a character that could go on the word
/// follows it, so `//` and `/*` always start comments (observed: `//g` is a
/// comment to libconfuse 3.3, `/usr/lib` a word).
fn ends_word(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\r' | '#' | '"' | '\'' | '=' | '{' | '}' | '(' | ')' | '+' | ',' | '*'
    )
}

/// The length of the bare word starting at `i`, 0 if none does.
fn word_length(chars: &[char], i: usize) -> usize {
    let mut j = i;
    while let Some(&c) = chars.get(j) {
        if c == '/' {
            match chars.get(j + 1) {
                Some(&next) if !ends_word(next) && next != '/' => j += 2,
                _ => break,
            }
        } else if ends_word(c) {
            break;
        } else {
            j += 1;
        }
    }
    j - i
}

/// Splits a configuration text into libconfuse's tokens, with the line each
/// starts on. Comments are dropped.
fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while let Some(c) = at(i) {
        let start_line = line;
        let mut push = |tok: Tok| {
            out.push(Token {
                tok,
                line: start_line,
            })
        };
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '#' => {
                while at(i).is_some_and(|c| c != '\n') {
                    i += 1;
                }
            }
            '{' | '}' | '(' | ')' | '=' | ',' => {
                push(match c {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '=' => Tok::Equals,
                    _ => Tok::Comma,
                });
                i += 1;
            }
            '+' if at(i + 1) == Some('=') => {
                push(Tok::Equals);
                i += 2;
            }
            '"' => {
                let (word, next, lines) = double_quoted(&chars, i + 1);
                push(Tok::Word(word));
                line += lines;
                i = next;
            }
            '\'' => {
                let (word, next, lines) = single_quoted(&chars, i + 1);
                push(Tok::Word(word));
                line += lines;
                i = next;
            }
            '$' if at(i + 1) == Some('{') => {
                let end = (i + 2..chars.len())
                    .find(|&j| chars[j] == '}')
                    .unwrap_or(chars.len());
                let inner: String = chars[i + 2..end].iter().collect();
                push(Tok::Word(environment(&inner)));
                i = end + 1;
            }
            _ if word_length(&chars, i) > 0 => {
                let end = i + word_length(&chars, i);
                push(Tok::Word(chars[i..end].iter().collect()));
                i = end;
            }
            '/' if at(i + 1) == Some('/') => {
                while at(i).is_some_and(|c| c != '\n') {
                    i += 1;
                }
            }
            '/' if at(i + 1) == Some('*') => {
                i += 2;
                while let Some(c) = at(i) {
                    if c == '*' && at(i + 1) == Some('/') {
                        i += 2;
                        break;
                    }
                    if c == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// `${NAME}` or `${NAME:-default}`, as libconfuse substitutes it.
fn environment(inner: &str) -> String {
    let (name, default) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner, None),
    };
    std::env::var(name)
        .ok()
        .or(default.map(str::to_owned))
        .unwrap_or_default()
}

/// A `"…"` string from `i` (after the quote): its text, the index after the
/// closing quote, and the newlines it spans.
fn double_quoted(chars: &[char], mut i: usize) -> (String, usize, usize) {
    let mut text = String::new();
    let mut lines = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            '"' => return (text, i + 1, lines),
            '\n' => {
                text.push('\n');
                lines += 1;
                i += 1;
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                let end = (i + 2..chars.len())
                    .find(|&j| chars[j] == '}')
                    .unwrap_or(chars.len());
                let inner: String = chars[i + 2..end.min(chars.len())].iter().collect();
                text.push_str(&environment(&inner));
                i = end + 1;
            }
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    break;
                };
                i += 2;
                match next {
                    '\n' => lines += 1,
                    'n' => text.push('\n'),
                    'r' => text.push('\r'),
                    't' => text.push('\t'),
                    'b' => text.push('\u{8}'),
                    'f' => text.push('\u{c}'),
                    'a' => text.push('\u{7}'),
                    'e' => text.push('\u{1b}'),
                    'v' => text.push('\u{b}'),
                    'x' => {
                        let digits: String = chars[i..]
                            .iter()
                            .take(2)
                            .take_while(|c| c.is_ascii_hexdigit())
                            .collect();
                        i += digits.len();
                        if let Ok(v) = u8::from_str_radix(&digits, 16) {
                            text.push(char::from(v));
                        }
                    }
                    '0'..='7' => {
                        let digits: String = chars[i - 1..]
                            .iter()
                            .take(3)
                            .take_while(|c| ('0'..='7').contains(c))
                            .collect();
                        i += digits.len() - 1;
                        if let Ok(v) = u8::from_str_radix(&digits, 8) {
                            text.push(char::from(v));
                        }
                    }
                    other => text.push(other),
                }
            }
            other => {
                text.push(other);
                i += 1;
            }
        }
    }
    (text, i, lines)
}

/// A `'…'` string: only `\\` and `\'` are escapes there.
fn single_quoted(chars: &[char], mut i: usize) -> (String, usize, usize) {
    let mut text = String::new();
    let mut lines = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            '\'' => return (text, i + 1, lines),
            '\\' if matches!(chars.get(i + 1), Some('\\' | '\'')) => {
                text.push(chars[i + 1]);
                i += 2;
            }
            '\\' if chars.get(i + 1) == Some(&'\n') => {
                lines += 1;
                i += 2;
            }
            c => {
                if c == '\n' {
                    lines += 1;
                }
                text.push(c);
                i += 1;
            }
        }
    }
    (text, i, lines)
}

/// A module block as written, before libconfuse merged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenBlock {
    pub origin: Origin,
    /// Its `name` option, as libconfuse reads it (the last one given wins).
    pub name: Option<String>,
}

/// What reading the configuration's files found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every module block, in the order libconfuse parses them.
    pub blocks: Vec<WrittenBlock>,
    /// Each file read, with the files its own `include`s read, in order.
    pub includes: Vec<(PathBuf, Vec<PathBuf>)>,
}

impl Scan {
    /// The files `file` includes itself (not through another file).
    pub fn included_by(&self, file: &Path) -> &[PathBuf] {
        self.includes
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, inc)| inc.as_slice())
            .unwrap_or_default()
    }
}

/// Reads `main` and everything it includes, as gmond would.
pub fn scan(main: &Path) -> Scan {
    let mut scan = Scan::default();
    scan_file(main, 0, &mut scan);
    scan
}

fn scan_file(path: &Path, depth: usize, scan: &mut Scan) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let slot = scan.includes.len();
    scan.includes.push((path.to_path_buf(), Vec::new()));
    let tokens = tokenize(&text);
    let mut walk = Walk {
        tokens: &tokens,
        pos: 0,
        file: path,
        depth,
        slot,
        scan,
    };
    walk.body(Context::Root);
}

/// Which section the walk is in, as far as module blocks are concerned.
#[derive(Clone, Copy, PartialEq)]
enum Context {
    Root,
    Modules,
    /// A `module` block: the index of its entry in `Scan::blocks`.
    Module(usize),
    Other,
}

struct Walk<'a> {
    tokens: &'a [Token],
    pos: usize,
    file: &'a Path,
    depth: usize,
    /// This file's entry in `Scan::includes`.
    slot: usize,
    scan: &'a mut Scan,
}

impl Walk<'_> {
    fn peek(&self, ahead: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + ahead).map(|t| &t.tok)
    }

    /// The items of one section (or the file), up to its closing brace.
    fn body(&mut self, context: Context) {
        while let Some(token) = self.tokens.get(self.pos) {
            let line = token.line;
            self.pos += 1;
            let name = match &token.tok {
                Tok::Word(name) => name.clone(),
                Tok::Close if context != Context::Root => return,
                _ => continue,
            };
            match self.peek(0) {
                Some(Tok::Equals) => {
                    self.pos += 1;
                    let value = self.value();
                    if let (Context::Module(i), Some(value)) = (context, value) {
                        if name.eq_ignore_ascii_case("name") {
                            self.scan.blocks[i].name = Some(value);
                        }
                    }
                }
                Some(Tok::LParen) => {
                    self.pos += 1;
                    let args = self.arguments();
                    if context == Context::Root && name.eq_ignore_ascii_case("include") {
                        if let Some(pattern) = args.first() {
                            self.include(pattern);
                        }
                    }
                }
                Some(Tok::Open) => {
                    self.pos += 1;
                    let inner = match context {
                        Context::Root if name.eq_ignore_ascii_case("modules") => Context::Modules,
                        Context::Modules if name.eq_ignore_ascii_case("module") => {
                            self.scan.blocks.push(WrittenBlock {
                                origin: Origin {
                                    file: self.file.to_path_buf(),
                                    line,
                                },
                                name: None,
                            });
                            Context::Module(self.scan.blocks.len() - 1)
                        }
                        _ => Context::Other,
                    };
                    self.body(inner);
                }
                Some(Tok::Word(_)) if self.peek(1) == Some(&Tok::Open) => {
                    // A titled section (`param NAME { … }`).
                    self.pos += 2;
                    self.body(Context::Other);
                }
                _ => {}
            }
        }
    }

    /// An option's value: a string, or a `{ … }` list (whose items are not needed).
    fn value(&mut self) -> Option<String> {
        match self.tokens.get(self.pos).map(|t| &t.tok) {
            Some(Tok::Word(w)) => {
                self.pos += 1;
                Some(w.clone())
            }
            Some(Tok::Open) => {
                while let Some(t) = self.tokens.get(self.pos) {
                    self.pos += 1;
                    if t.tok == Tok::Close {
                        break;
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// A function's arguments, up to the closing parenthesis.
    fn arguments(&mut self) -> Vec<String> {
        let mut args = Vec::new();
        while let Some(t) = self.tokens.get(self.pos) {
            self.pos += 1;
            match &t.tok {
                Tok::RParen => break,
                Tok::Word(w) => args.push(w.clone()),
                _ => {}
            }
        }
        args
    }

    fn include(&mut self, pattern: &str) {
        for file in expand_include(pattern) {
            self.scan.includes[self.slot].1.push(file.clone());
            scan_file(&file, self.depth + 1, self.scan);
        }
    }
}

/// The files gmond 3.7.2's `include ('…')` reads, in its order: the path
/// itself when it exists; otherwise, when its last part has a wildcard,
/// the entries of its directory that match it (shell rules, dot-files
/// excluded), in the directory's own order, which is the order gmond
/// reads them in (gmond-config.md §3). Relative paths are relative to the
/// working directory, as for gmond.
pub fn expand_include(pattern: &str) -> Vec<PathBuf> {
    if std::fs::metadata(pattern).is_ok() {
        return vec![PathBuf::from(pattern)];
    }
    if !pattern.contains(['*', '?', '[']) {
        return Vec::new();
    }
    let (dir, glob) = match pattern.rsplit_once('/') {
        Some((dir, glob)) => (dir, glob),
        None => (".", pattern),
    };
    let Ok(entries) = std::fs::read_dir(if dir.is_empty() { "/" } else { dir }) else {
        return Vec::new();
    };
    let Ok(c_glob) = CString::new(glob) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let c_name = CString::new(name.as_encoded_bytes()).ok()?;
            // SAFETY: both arguments are NUL-terminated strings that live
            // across the call; fnmatch only reads them.
            let matched = unsafe {
                libc::fnmatch(
                    c_glob.as_ptr(),
                    c_name.as_ptr(),
                    libc::FNM_PATHNAME | libc::FNM_PERIOD,
                )
            } == 0;
            matched.then(|| PathBuf::from(format!("{dir}/{}", name.to_string_lossy())))
        })
        .collect()
}

/// `blocks` with their origins, when the file they were parsed from is
/// known (see [`locate`]).
pub fn located(main: Option<PathBuf>, mut blocks: Vec<ModuleBlock>) -> Vec<ModuleBlock> {
    if let Some(main) = main {
        locate(&main, &mut blocks);
    }
    blocks
}

/// Gives each parsed block the place it was written in `main` or the files
/// it includes, when the blocks found there are the parsed ones, name for
/// name; otherwise leaves every block without one.
pub fn locate(main: &Path, blocks: &mut [ModuleBlock]) {
    let written = scan(main).blocks;
    let same = written.len() == blocks.len()
        && written
            .iter()
            .zip(blocks.iter())
            .all(|(w, b)| w.name == b.name);
    if !same {
        return;
    }
    for (block, w) in blocks.iter_mut().zip(written) {
        block.origin = Some(w.origin);
    }
}

/// Where gmond's parser stops on a configuration it rejects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The file and line; the line is the first one whose text, parsed
    /// with everything before it, gives the parser's error.
    pub origin: Origin,
    /// That line's text, trimmed.
    pub text: String,
    /// libconfuse's message, without the "Parse error for …" line and any
    /// "file:line:" of its own.
    pub message: String,
}

/// Finds the file and line of a parse error in `main` (with its includes),
/// by asking gmond's parser itself: each included file is parsed on its own
/// (libconfuse names no file for an error inside a section), the innermost
/// one that fails is the culprit, and the error's line is the shortest
/// start of that file that fails the same way. `None` when `main` parses,
/// or the error cannot be pinned down. Forks a child per parse: call it
/// while the process has a single thread, as for
/// [`gmond_config::parse_config_file`].
pub fn locate_parse_error(main: &Path) -> Option<ParseError> {
    let scan = scan(main);
    let mut file = main.to_path_buf();
    let mut seen = vec![file.clone()];
    'deeper: loop {
        for inner in scan.included_by(&file) {
            if seen.contains(inner) {
                continue;
            }
            if let Ok(ParserVerdict::Rejected(_)) = gmond_config::try_parse(inner) {
                file = inner.clone();
                seen.push(file.clone());
                continue 'deeper;
            }
        }
        break;
    }
    let ParserVerdict::Rejected(output) = gmond_config::try_parse(&file).ok()? else {
        return None;
    };
    let wanted = parser_message(&output, &file);
    let text = std::fs::read_to_string(&file).ok()?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let probe = ProbeFile::new()?;
    // The parser stops at the first error, so every start of the file that
    // reaches the bad line fails the same way, and every shorter one does
    // not: the shortest such start ends on the line.
    let fails_the_same = |count: usize| -> bool {
        if std::fs::write(&probe.0, lines[..count].concat()).is_err() {
            return false;
        }
        matches!(
            gmond_config::try_parse(&probe.0),
            Ok(ParserVerdict::Rejected(out)) if parser_message(&out, &probe.0) == wanted
        )
    };
    let (mut low, mut high) = (1, lines.len());
    if high == 0 || !fails_the_same(high) {
        return None;
    }
    while low < high {
        let middle = low + (high - low) / 2;
        if fails_the_same(middle) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Some(ParseError {
        origin: Origin { file, line: high },
        text: lines[high - 1].trim().to_owned(),
        message: wanted,
    })
}

/// libconfuse's error from the parser's output for `file`: without the
/// "Parse error for '…'" line gmond adds, and without the "file:line: " it
/// puts before errors outside sections (its line numbers drift; ours are
/// found by parsing).
fn parser_message(output: &str, file: &Path) -> String {
    let own = format!("{}:", file.display());
    output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Parse error for"))
        .map(|l| match l.strip_prefix(&own) {
            Some(rest) => rest
                .split_once(": ")
                .filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
                .map_or(rest, |(_, message)| message),
            None => l,
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A scratch file for the parser's probes, removed when dropped.
struct ProbeFile(PathBuf);

impl ProbeFile {
    fn new() -> Option<ProbeFile> {
        let path =
            std::env::temp_dir().join(format!("modpython-check-{}-probe.conf", std::process::id()));
        std::fs::write(&path, "").ok()?;
        Some(ProbeFile(path))
    }
}

impl Drop for ProbeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(String, usize)> {
        tokenize(text)
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Word(w) => Some((w, t.line)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_strings_and_lines_are_read_as_libconfuse_does() {
        let text = "# comment \"x\n/* two\nlines */ a = \"b\\\"c\"\n// gone\nd = 'e\\'f' //g\n\
                    path = /usr/lib/x.so\nh += \"i\nj\" k\n";
        assert_eq!(
            words(text),
            vec![
                ("a".into(), 3),
                ("b\"c".into(), 3),
                ("d".into(), 5),
                ("e'f".into(), 5),
                ("path".into(), 6),
                ("/usr/lib/x.so".into(), 6),
                ("h".into(), 7),
                ("i\nj".into(), 7),
                ("k".into(), 8),
            ]
        );
    }

    #[test]
    fn module_blocks_are_found_with_their_lines_through_includes() {
        let dir = std::env::temp_dir().join(format!("modpython-scan-{}", std::process::id()));
        let confd = dir.join("conf.d");
        std::fs::create_dir_all(&confd).unwrap();
        std::fs::write(
            confd.join("a.pyconf"),
            "\n/* x */\nmodules {\n  module {\n    name = \"first\"\n    param p { value = \"}\" }\n  }\n}\n",
        )
        .unwrap();
        std::fs::write(
            confd.join(".hidden.pyconf"),
            "modules { module { name = \"no\" } }",
        )
        .unwrap();
        let main = dir.join("gmond.conf");
        std::fs::write(
            &main,
            format!(
                "globals {{ daemonize = no }}\nMODULES {{ module {{ name = \"host\" }} }}\n\
                 include ('{}/*.pyconf')\nmodules {{\n module {{ name = 'last' }}\n}}\n",
                confd.display()
            ),
        )
        .unwrap();
        let scan = scan(&main);
        let found: Vec<(Option<&str>, String)> = scan
            .blocks
            .iter()
            .map(|b| (b.name.as_deref(), b.origin.to_string()))
            .collect();
        let a = format!("{}/a.pyconf", confd.display());
        assert_eq!(
            found,
            vec![
                (Some("host"), format!("{}:2", main.display())),
                (Some("first"), format!("{a}:4")),
                (Some("last"), format!("{}:5", main.display())),
            ]
        );
        assert_eq!(scan.included_by(&main), &[PathBuf::from(&a)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
