//! Where each key of a spec stands in its file.
//!
//! `yaml_serde` reports positions for syntax and type errors only; semantic checks run on
//! the typed spec and need the line and column of the offending key. This module walks the
//! YAML events once (no alias expansion, bounded work) and records the position of every
//! mapping key and sequence item by path. It also rejects what serde would silently accept:
//! duplicate keys, several documents, and more aliases than a spec ever needs.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A path into the document: map keys and sequence indices, e.g. `spec.nodes.node-a.ssh.port`.
pub type Path = Vec<String>;

/// Every key's position by path.
#[derive(Debug, Default)]
pub struct Index {
    keys: HashMap<Path, Pos>,
    values: HashMap<Path, Pos>,
    /// Scalar values by path, to find the position of a value a serde error quotes.
    scalars: Vec<(Path, Pos, String)>,
}

/// A structural problem found while indexing.
#[derive(Debug)]
pub struct IndexError {
    pub pos: Pos,
    pub message: String,
}

/// A spec needs few aliases; a document with many is refused before serde expands them.
const MAX_ALIASES: usize = 64;
/// Deep nesting is refused early: a spec is at most a handful of levels deep.
const MAX_DEPTH: usize = 32;

enum Frame {
    Map {
        path: Path,
        expecting_key: bool,
        pending_key: Option<String>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: Path,
        next: usize,
    },
}

fn pos_of(m: &yaml_rust2::scanner::Marker) -> Pos {
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

impl Index {
    /// Build the index of `text`, or report the first structural problem.
    pub fn build(text: &str) -> Result<Self, IndexError> {
        let mut idx = Index::default();
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        let mut documents = 0usize;
        let mut aliases = 0usize;
        loop {
            let (ev, mark) = parser.next_token().map_err(|e| IndexError {
                pos: pos_of(e.marker()),
                message: format!("YAML syntax: {}", e.info()),
            })?;
            let pos = pos_of(&mark);
            let tag = match &ev {
                Event::Scalar(_, _, _, t)
                | Event::MappingStart(_, t)
                | Event::SequenceStart(_, t) => t.as_ref(),
                _ => None,
            };
            // A tag changes what a value means to some YAML readers and is silently dropped by
            // others: a spec has none (`!!str`, which only says "a string", is allowed).
            if let Some(t) = tag.filter(|t| !(t.handle == "!!" && t.suffix == "str")) {
                return Err(IndexError {
                    pos,
                    message: format!(
                        "the YAML tag `{}{}` has no meaning in a spec: remove it (write the value alone)",
                        t.handle.escape_default(),
                        t.suffix.escape_default()
                    ),
                });
            }
            match ev {
                Event::StreamEnd => break,
                Event::DocumentStart => {
                    documents += 1;
                    if documents > 1 {
                        return Err(IndexError {
                            pos,
                            message: "a file holds one spec (one YAML document); put each cluster in its own file".into(),
                        });
                    }
                }
                Event::Alias(_) => {
                    aliases += 1;
                    if aliases > MAX_ALIASES {
                        return Err(IndexError {
                            pos,
                            message: format!(
                                "more than {MAX_ALIASES} YAML aliases: refused (alias expansion could blow up)"
                            ),
                        });
                    }
                    idx.value_at(&mut stack, pos);
                }
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map {
                        path,
                        expecting_key: true,
                        pending_key,
                        seen,
                        ..
                    }) = stack.last_mut()
                    {
                        if let Some(first) = seen.get(&value) {
                            return Err(IndexError {
                                pos,
                                message: format!(
                                    "duplicate key `{value}` (first at line {}, column {})",
                                    first.line, first.col
                                ),
                            });
                        }
                        seen.insert(value.clone(), pos);
                        let mut p = path.clone();
                        p.push(value.clone());
                        idx.keys.insert(p, pos);
                        *pending_key = Some(value);
                        if let Some(Frame::Map { expecting_key, .. }) = stack.last_mut() {
                            *expecting_key = false;
                        }
                    } else if let Some(p) = idx.value_at(&mut stack, pos) {
                        idx.scalars.push((p, pos, value));
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(IndexError {
                            pos,
                            message: format!("nesting deeper than {MAX_DEPTH} levels"),
                        });
                    }
                    if let Some(Frame::Map {
                        expecting_key: true,
                        ..
                    }) = stack.last()
                    {
                        return Err(IndexError {
                            pos,
                            message: "a key must be a plain string, not a mapping or a list".into(),
                        });
                    }
                    let path = idx.value_at(&mut stack, pos).unwrap_or_default();
                    stack.push(if matches!(ev, Event::MappingStart(..)) {
                        Frame::Map {
                            path,
                            expecting_key: true,
                            pending_key: None,
                            seen: HashMap::new(),
                        }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            }
        }
        Ok(idx)
    }

    /// Record a value at the current position of the innermost container; returns its path.
    fn value_at(&mut self, stack: &mut [Frame], pos: Pos) -> Option<Path> {
        let path = match stack.last_mut()? {
            Frame::Map {
                path,
                expecting_key,
                pending_key,
                ..
            } => {
                let mut p = path.clone();
                p.push(pending_key.take().unwrap_or_default());
                *expecting_key = true;
                p
            }
            Frame::Seq { path, next } => {
                let mut p = path.clone();
                p.push(next.to_string());
                self.keys.insert(p.clone(), pos);
                *next += 1;
                p
            }
        };
        self.values.insert(path.clone(), pos);
        Some(path)
    }

    /// The position of the key at `path`, or of its nearest ancestor that exists.
    pub fn key(&self, path: &[&str]) -> Pos {
        self.lookup(&self.keys, path)
    }

    /// The position of the value at `path`, or of its nearest ancestor that exists.
    pub fn value(&self, path: &[&str]) -> Pos {
        self.lookup(&self.values, path)
    }

    /// The position of the first scalar under `under` whose text is `text`.
    pub fn scalar_under(&self, under: &[String], text: &str) -> Option<Pos> {
        self.scalars
            .iter()
            // messages quote a culprit with its control characters escaped
            .filter(|(p, _, t)| {
                (t == text || t.escape_default().to_string() == text) && p.starts_with(under)
            })
            .map(|(_, pos, _)| *pos)
            .min()
    }

    /// The position of the first key named `name` at or below `under` (serde loses the
    /// path inside internally tagged enums such as `runtime`).
    pub fn key_under(&self, under: &[String], name: &str) -> Option<Pos> {
        self.keys
            .iter()
            .filter(|(p, _)| p.starts_with(under) && p.last().map(String::as_str) == Some(name))
            .map(|(_, pos)| *pos)
            .min()
    }

    fn lookup(&self, map: &HashMap<Path, Pos>, path: &[&str]) -> Pos {
        let mut p: Path = path.iter().map(|s| (*s).to_owned()).collect();
        loop {
            if let Some(pos) = map.get(&p).or_else(|| self.keys.get(&p)) {
                return *pos;
            }
            if p.pop().is_none() {
                return Pos { line: 1, col: 1 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_and_items() {
        let text = "a:\n  b: 1\n  c:\n    - x\n    - { d: 2 }\n";
        let idx = Index::build(text).unwrap();
        assert_eq!(idx.key(&["a"]), Pos { line: 1, col: 1 });
        assert_eq!(idx.key(&["a", "b"]), Pos { line: 2, col: 3 });
        assert_eq!(idx.value(&["a", "b"]), Pos { line: 2, col: 6 });
        assert_eq!(idx.key(&["a", "c", "1"]), Pos { line: 5, col: 7 });
        assert_eq!(idx.key(&["a", "c", "1", "d"]), Pos { line: 5, col: 9 });
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(idx.key(&["a", "b", "zz"]), Pos { line: 2, col: 3 });
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_positions() {
        let e = Index::build("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, col: 1 });
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
        assert!(e.message.contains("line 1"), "{}", e.message);
    }

    #[test]
    fn several_documents_are_refused() {
        let e = Index::build("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
    }
}
