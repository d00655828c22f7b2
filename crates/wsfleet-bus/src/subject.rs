//! Subject templates: `feeds.{slot}`, `ws.{host}.{conn}`.

use std::fmt;

use wsfleet::fleet::{ConnId, SlotId};

/// A subject with placeholders, filled per message:
///
/// - `{slot}`: the slot index (`3`);
/// - `{conn}`: the connection id (`12`);
/// - `{host}`: the upstream URL's host, dots replaced by `_` so it stays
///   one subject token (`feed_example_com`).
///
/// ```
/// use wsfleet::fleet::{ConnId, SlotId};
/// use wsfleet_bus::SubjectTemplate;
/// let t = SubjectTemplate::parse("feeds.{host}.{slot}").unwrap();
/// assert_eq!(t.render(ConnId(7), SlotId(2), "feed.example.com"), "feeds.feed_example_com.2");
/// assert_eq!(t.wildcard(), "feeds.*.*");
/// assert!(SubjectTemplate::parse("feeds.{nope}").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Slot,
    Conn,
    Host,
}

/// Why a subject template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplateError {
    /// The template.
    pub template: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for SubjectTemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad subject {:?}: {}", self.template, self.problem)
    }
}

impl std::error::Error for SubjectTemplateError {}

impl SubjectTemplate {
    /// Parses `template`.
    ///
    /// # Errors
    /// An unknown placeholder, an unclosed `{`, wildcards (`*`, `>`),
    /// whitespace, or an empty token.
    pub fn parse(template: &str) -> Result<Self, SubjectTemplateError> {
        let err = |problem: String| SubjectTemplateError {
            template: template.to_owned(),
            problem,
        };
        if template.is_empty() {
            return Err(err("empty".into()));
        }
        if template.contains(['*', '>']) || template.contains(char::is_whitespace) {
            return Err(err(
                "a publish subject has no wildcards (* >) and no whitespace".into(),
            ));
        }
        if template.split('.').any(str::is_empty) {
            return Err(err("empty token (leading, trailing or doubled dot)".into()));
        }
        // A placeholder is a whole token, so that `wildcard` is a valid filter.
        let bytes = template.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            let whole = match b {
                b'{' => i == 0 || bytes[i - 1] == b'.',
                b'}' => i + 1 == bytes.len() || bytes[i + 1] == b'.',
                _ => true,
            };
            if !whole {
                return Err(err(
                    "a placeholder must be a whole token: feeds.{slot}, not feeds.s{slot}".into(),
                ));
            }
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(err("unclosed {".into()));
            };
            parts.push(match &rest[open + 1..open + close] {
                "slot" => Part::Slot,
                "conn" => Part::Conn,
                "host" => Part::Host,
                other => {
                    return Err(err(format!(
                        "unknown placeholder {{{other}}} (known: {{slot}}, {{conn}}, {{host}})"
                    )));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(err("} without {".into()));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// True when every message gets the same subject.
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The subject for one message.
    pub fn render(&self, conn: ConnId, slot: SlotId, host: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Slot => out.push_str(&slot.0.to_string()),
                Part::Conn => out.push_str(&conn.0.to_string()),
                Part::Host => out.extend(host.chars().map(|c| match c {
                    '.' | '*' | '>' => '_',
                    c if c.is_whitespace() => '_',
                    c => c,
                })),
            }
        }
        out
    }

    /// The subjects it can render, as a filter: each placeholder becomes
    /// `*` (a stream created for the sink listens on this).
    pub fn wildcard(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                _ => "*",
            })
            .collect()
    }
}
