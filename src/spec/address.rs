//! The archive address rewrite: `{local}={domain}@archive.invalid`.
//!
//! Every message delivered to a spool is BCC'd to the archive host under a rewritten
//! address; `arch-restore` must recover the original recipient from it. Postfix builds the
//! rewritten address with a regexp substitution (it cannot escape characters), so the local
//! part arrives raw: `a=b@students.example.org` becomes `a=b=students.example.org@archive…`.
//! Decoding stays unambiguous because the literal between the two placeholders must hold a
//! character that no domain name can hold: the domain side is then cut at the right place
//! whatever the local part contains.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A validated archive address template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddressTemplate {
    text: String,
    prefix: String,
    separator: String,
    /// Text after the second placeholder, up to and including `@archive-domain`.
    suffix: String,
    local_first: bool,
}

/// Why a template or an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(String);

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// A syntactically plausible DNS domain: labels of `[a-z0-9-]`, dot-separated.
pub fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl FromStr for AddressTemplate {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |m: &str| {
            Err(AddressError(format!(
                "archive address `{}`: {m}",
                s.escape_default()
            )))
        };
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return err(
                "holds a space, a control character or a non-ASCII character: an address is printable ASCII, like `{local}={domain}@archive.example.org`",
            );
        }
        if s.matches("{local}").count() != 1 || s.matches("{domain}").count() != 1 {
            return err("must contain `{local}` and `{domain}` exactly once each");
        }
        let Some((local_part, archive_domain)) = s.rsplit_once('@') else {
            return err(
                "must end with `@` and the archive domain, e.g. `{local}={domain}@archive.example.org`",
            );
        };
        if !is_domain(archive_domain) {
            return err(
                "the part after `@` must be a plain domain name (the archive host's domain)",
            );
        }
        let l = local_part.find("{local}");
        let d = local_part.find("{domain}");
        let (Some(l), Some(d)) = (l, d) else {
            return err("`{local}` and `{domain}` must both stand before the `@`");
        };
        let local_first = l < d;
        let (first, first_len, second, second_len) = if local_first {
            (l, "{local}".len(), d, "{domain}".len())
        } else {
            (d, "{domain}".len(), l, "{local}".len())
        };
        let prefix = &local_part[..first];
        let separator = &local_part[first + first_len..second];
        let tail = &local_part[second + second_len..];
        if separator.chars().all(is_domain_char) {
            return err(
                "the text between `{local}` and `{domain}` must contain a character that cannot appear in a domain name (for example `=`), or the original address could not be decoded",
            );
        }
        if separator.contains('@') || prefix.contains('@') || tail.contains('@') {
            return err("only one `@` is allowed");
        }
        for c in ['%', '!', '"', ' ', '\\', '<', '>', ',', ';'] {
            if local_part
                .replace("{local}", "")
                .replace("{domain}", "")
                .contains(c)
            {
                return err(&format!(
                    "`{c}` in the template would be interpreted by mail routing; use `=`, `+`, `_` or `.`"
                ));
            }
        }
        Ok(Self {
            text: s.to_owned(),
            prefix: prefix.to_owned(),
            separator: separator.to_owned(),
            suffix: format!("{tail}@{archive_domain}"),
            local_first,
        })
    }
}

impl AddressTemplate {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The archive host's domain (after `@`).
    pub fn archive_domain(&self) -> &str {
        self.suffix.rsplit_once('@').map_or("", |(_, d)| d)
    }

    /// The archive address for an original recipient `local@domain`.
    pub fn encode(&self, local: &str, domain: &str) -> String {
        let (a, b) = if self.local_first {
            (local, domain)
        } else {
            (domain, local)
        };
        format!("{}{a}{}{b}{}", self.prefix, self.separator, self.suffix)
    }

    /// The original recipient `(local, domain)` of an archive address, or `None` when the
    /// address was not made by this template. The archive domain compares case-insensitively.
    pub fn decode(&self, archived: &str) -> Option<(String, String)> {
        let (lp, ad) = archived.rsplit_once('@')?;
        let (tail, want_ad) = self.suffix.rsplit_once('@')?;
        if !ad.eq_ignore_ascii_case(want_ad) {
            return None;
        }
        let body = lp.strip_prefix(self.prefix.as_str())?.strip_suffix(tail)?;
        if self.local_first {
            // The domain never holds the separator: cut at its last occurrence.
            let (local, domain) = body.rsplit_once(self.separator.as_str())?;
            (!local.is_empty() && is_domain(domain)).then(|| (local.to_owned(), domain.to_owned()))
        } else {
            let (domain, local) = body.split_once(self.separator.as_str())?;
            (!local.is_empty() && is_domain(domain)).then(|| (local.to_owned(), domain.to_owned()))
        }
    }
}

impl fmt::Display for AddressTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for AddressTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for AddressTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for AddressTemplate {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("AddressTemplate")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[^@]*\\{local\\}[^@]*\\{domain\\}[^@]*@[A-Za-z0-9.-]+$|^[^@]*\\{domain\\}[^@]*\\{local\\}[^@]*@[A-Za-z0-9.-]+$",
            "description": "The BCC rewrite of each recipient, e.g. `{local}={domain}@archive.example.org`. The text between {local} and {domain} must hold a character no domain can (like `=`), so the original address can be decoded.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn awkward_local_parts_round_trip() {
        let t: AddressTemplate = "{local}={domain}@archive.invalid".parse().unwrap();
        for local in [
            "john.doe",
            "a-b",
            "a_b",
            "a+tag",
            "a=b",
            "a==b=",
            "=lead",
            "UPPER.Case",
            "john doe",
            "\"quoted\"",
            "x.students.lab",
        ] {
            for domain in ["students.lab", "staff.example.org", "a-b.c"] {
                let enc = t.encode(local, domain);
                assert_eq!(
                    t.decode(&enc),
                    Some((local.to_owned(), domain.to_owned())),
                    "{enc}"
                );
            }
        }
    }

    #[test]
    fn domain_first_and_prefixed_templates_round_trip() {
        for tpl in [
            "{domain}={local}@arch.lab",
            "arch+{local}=at={domain}.x@arch.lab",
        ] {
            let t: AddressTemplate = tpl.parse().unwrap();
            for local in ["a=b", "x=at=y", "plain", "a.b+c"] {
                let enc = t.encode(local, "students.lab");
                assert_eq!(
                    t.decode(&enc),
                    Some((local.to_owned(), "students.lab".to_owned())),
                    "{tpl} {enc}"
                );
            }
        }
    }

    #[test]
    fn foreign_addresses_do_not_decode() {
        let t: AddressTemplate = "{local}={domain}@archive.invalid".parse().unwrap();
        assert_eq!(t.decode("john@students.lab"), None);
        assert_eq!(t.decode("john=students.lab@other.invalid"), None);
        assert_eq!(t.decode("=students.lab@archive.invalid"), None);
        assert_eq!(t.decode("john=@archive.invalid"), None);
        assert_eq!(
            t.decode("John=Students.Lab@ARCHIVE.invalid"),
            Some(("John".into(), "Students.Lab".into()))
        );
    }

    #[test]
    fn ambiguous_or_malformed_templates_are_refused() {
        for bad in [
            "{local}.{domain}@archive.invalid",
            "{local}{domain}@archive.invalid",
            "{local}@archive.invalid",
            "{local}={domain}",
            "{local}={domain}@",
            "{local}={domain}@arch@x",
            "{local}={local}={domain}@x.y",
            "{local}%{domain}@x.y",
            "{local}={domain}@bad_domain!",
        ] {
            assert!(bad.parse::<AddressTemplate>().is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn any_local_part_round_trips(local in "[A-Za-z0-9.=+_\\-\"]{1,40}", domain in "[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z][a-z0-9]{0,8}){1,3}") {
            let t: AddressTemplate = "{local}={domain}@archive.invalid".parse().unwrap();
            prop_assert_eq!(t.decode(&t.encode(&local, &domain)), Some((local.clone(), domain.clone())));
        }
    }
}
