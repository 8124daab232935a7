//! deb822: the `Field: value` stanza format of `Packages`, `Release` and `control` files.
//!
//! Stanzas are separated by blank lines (lines of only whitespace count as blank). A line starting with
//! a space or tab continues the previous field. Field names match case-insensitively, as dpkg does.
//! Values borrow from the input: a multi-line value is the raw text from after `Field:` to the end of
//! its last continuation line (newlines and the leading space of continuation lines included), trimmed.
//! Comment lines (`#`) are allowed, as in `debian/control`; archive indices have none.
//!
//! Not handled: PGP armor (verify and strip it first, see `inrelease`) and `\r\n` line ends (the
//! caller normalises them).

/// One stanza: its fields in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stanza<'a> {
    fields: Vec<(&'a str, &'a str)>,
}

/// Why a deb822 text does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Deb822Error {
    /// A continuation line with no field before it.
    #[error("line {0}: continuation line without a field before it")]
    OrphanContinuation(usize),
    /// A line that is neither `Name: value` nor a continuation.
    #[error("line {0}: expected `Field: value`")]
    NoColon(usize),
    /// A field name that is empty or contains characters deb822 does not allow.
    #[error("line {0}: invalid field name {1:?}")]
    BadName(usize, String),
    /// `parse_one` found no stanza or more than one.
    #[error("expected exactly one stanza, found {0}")]
    StanzaCount(usize),
}

impl<'a> Stanza<'a> {
    /// The value of `name` (case-insensitive), if present.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// All fields in file order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.fields.iter().copied()
    }
}

/// Parses every stanza of `text`.
pub fn parse(text: &str) -> Result<Vec<Stanza<'_>>, Deb822Error> {
    let mut stanzas = Vec::new();
    let mut current = Stanza::default();
    // (name, start offset of the value, end offset of the value so far)
    let mut open: Option<(&str, usize, usize)> = None;
    let mut offset = 0usize;
    for (index, line_with_end) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let start = offset;
        offset += line_with_end.len();
        let line = line_with_end.strip_suffix('\n').unwrap_or(line_with_end);
        if line.trim().is_empty() {
            close_field(text, &mut open, &mut current);
            if !current.fields.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match open.as_mut() {
                Some((_, _, end)) => *end = start + line.len(),
                None => return Err(Deb822Error::OrphanContinuation(line_no)),
            }
            continue;
        }
        close_field(text, &mut open, &mut current);
        let colon = line.find(':').ok_or(Deb822Error::NoColon(line_no))?;
        let name = &line[..colon];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) || name.starts_with('-') {
            return Err(Deb822Error::BadName(line_no, name.to_owned()));
        }
        open = Some((name, start + colon + 1, start + line.len()));
    }
    close_field(text, &mut open, &mut current);
    if !current.fields.is_empty() {
        stanzas.push(current);
    }
    Ok(stanzas)
}

/// Parses a text that must hold exactly one stanza (a `control` or `Release` file).
pub fn parse_one(text: &str) -> Result<Stanza<'_>, Deb822Error> {
    let mut stanzas = parse(text)?;
    match stanzas.len() {
        1 => Ok(stanzas.remove(0)),
        n => Err(Deb822Error::StanzaCount(n)),
    }
}

fn close_field<'a>(text: &'a str, open: &mut Option<(&'a str, usize, usize)>, current: &mut Stanza<'a>) {
    if let Some((name, start, end)) = open.take() {
        current.fields.push((name, text[start..end].trim()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packages_like_text() {
        let text = "Package: a\nVersion: 1.0-1\nDescription: short\n more\n .\n end\n\n\n\
                    Package: b\nDepends: c (>= 1), d | e\n";
        let stanzas = parse(text).unwrap();
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].get("package"), Some("a"));
        assert_eq!(stanzas[0].get("Description"), Some("short\n more\n .\n end"));
        assert_eq!(stanzas[1].get("Depends"), Some("c (>= 1), d | e"));
        assert_eq!(stanzas[1].get("Version"), None);
    }

    #[test]
    fn empty_first_line_value_and_whitespace_blank_lines() {
        let text = "SHA256:\n abc 1 x\n def 2 y\n \t \nA: b";
        let stanzas = parse(text).unwrap();
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].get("sha256"), Some("abc 1 x\n def 2 y"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse(" orphan\n"), Err(Deb822Error::OrphanContinuation(1)));
        assert_eq!(parse("A: b\nno colon here\n"), Err(Deb822Error::NoColon(2)));
        assert_eq!(parse("A: b\n: x\n"), Err(Deb822Error::BadName(2, String::new())));
        assert_eq!(parse_one("A: b\n\nC: d\n"), Err(Deb822Error::StanzaCount(2)));
    }

    fn field_name() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z0-9-]{0,12}"
    }

    fn field_value() -> impl Strategy<Value = Vec<String>> {
        // First line may be empty only if continuation lines follow; lines never start or end with
        // blanks, because values are trimmed.
        (
            "([!-~]([ -~]{0,20}[!-~])?)?",
            prop::collection::vec("[!-~]([ -~]{0,20}[!-~])?", 0..3),
        )
            .prop_filter("empty value", |(first, rest)| {
                !first.is_empty() || !rest.is_empty()
            })
            .prop_map(|(first, rest)| std::iter::once(first).chain(rest).collect())
    }

    fn stanza() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
        prop::collection::vec((field_name(), field_value()), 1..6).prop_map(|fields| {
            // Names are unique within a stanza (case-insensitively), as in real files.
            let mut seen = std::collections::HashSet::new();
            fields
                .into_iter()
                .filter(|(n, _)| seen.insert(n.to_ascii_lowercase()))
                .collect()
        })
    }

    fn render(stanzas: &[Vec<(String, Vec<String>)>], blank: &str) -> String {
        let mut out = String::new();
        for (i, stanza) in stanzas.iter().enumerate() {
            if i > 0 {
                out.push_str(blank);
            }
            for (name, lines) in stanza {
                out.push_str(&format!("{name}: {}\n", lines[0]));
                for line in &lines[1..] {
                    out.push_str(&format!(" {line}\n"));
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn rendered_stanzas_parse_back(
            stanzas in prop::collection::vec(stanza(), 1..5),
            blank in prop::sample::select(vec!["\n", "\n\n", " \n", "\t\n\n"]),
        ) {
            let text = render(&stanzas, blank);
            let parsed = parse(&text).unwrap();
            prop_assert_eq!(parsed.len(), stanzas.len());
            for (want, got) in stanzas.iter().zip(&parsed) {
                let got: Vec<_> = got.fields().collect();
                prop_assert_eq!(got.len(), want.len());
                for ((name, lines), (gname, gvalue)) in want.iter().zip(got) {
                    prop_assert_eq!(name.as_str(), gname);
                    let joined = lines.iter().enumerate().map(|(i, l)| {
                        if i == 0 { l.clone() } else { format!(" {l}") }
                    }).collect::<Vec<_>>().join("\n");
                    prop_assert_eq!(joined.trim(), gvalue);
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[ -~\n\t]{0,200}") {
            let _ = parse(&text);
        }
    }
}
