//! `nats://HOST:PORT/SUBJECT`: where the bus is, and the subject, in one
//! string (the form of `--sink` and `--source`).

use std::fmt;

use url::Url;

/// A bus address: the server to connect to and the subject (or subject
/// template) after the path's slash.
///
/// ```
/// use wsfleet_bus::BusUrl;
/// let u: BusUrl = "nats://127.0.0.1:4222/feeds.{slot}".parse().unwrap();
/// assert_eq!(u.server(), "nats://127.0.0.1:4222");
/// assert_eq!(u.subject(), "feeds.{slot}");
/// assert!("nats://127.0.0.1:4222".parse::<BusUrl>().is_err()); // no subject
/// assert!("http://h/x".parse::<BusUrl>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusUrl {
    server: String,
    subject: String,
}

/// Why a bus address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusUrlError {
    /// The address as given (password redacted).
    pub value: String,
    /// What is wrong and how to write it.
    pub problem: &'static str,
}

impl fmt::Display for BusUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad bus address {:?}: {}", self.value, self.problem)
    }
}

impl std::error::Error for BusUrlError {}

impl std::str::FromStr for BusUrl {
    type Err = BusUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem| BusUrlError {
            value: redact_url(s),
            problem,
        };
        let url = Url::parse(s)
            .map_err(|_| err("not a URL; write nats://HOST:PORT/SUBJECT (tls://... for TLS)"))?;
        if !matches!(url.scheme(), "nats" | "tls") {
            return Err(err("the scheme must be nats:// or tls://"));
        }
        let Some(host) = url.host_str() else {
            return Err(err("no host; write nats://HOST:PORT/SUBJECT"));
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(err("no ?query or #fragment: the subject is the path"));
        }
        // `{` and `}` of a template arrive percent-encoded.
        let subject = url
            .path()
            .trim_start_matches('/')
            .replace("%7B", "{")
            .replace("%7D", "}");
        if subject.is_empty() {
            return Err(err("no subject; write nats://HOST:PORT/SUBJECT"));
        }
        if subject.contains('/') || subject.contains('%') {
            return Err(err(
                "the subject is one path segment of tokens separated by dots",
            ));
        }
        let mut server = format!("{}://", url.scheme());
        if !url.username().is_empty() {
            server.push_str(url.username());
            if let Some(password) = url.password() {
                server.push(':');
                server.push_str(password);
            }
            server.push('@');
        }
        server.push_str(host);
        if let Some(port) = url.port() {
            server.push_str(&format!(":{port}"));
        }
        Ok(BusUrl { server, subject })
    }
}

impl BusUrl {
    /// A bus address from its parts.
    pub fn new(server: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            subject: subject.into(),
        }
    }

    /// `nats://[USER[:PASSWORD]@]HOST[:PORT]`, what the client connects to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The subject (for a sink, possibly a template).
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl fmt::Display for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", redact_url(&self.server), self.subject)
    }
}

/// `url` with its query and password replaced by `REDACTED` (tokens often
/// ride in either); unparsable input is replaced whole.
///
/// ```
/// use wsfleet_bus::redact_url;
/// assert_eq!(redact_url("wss://u:pw@h/feed?token=s3cret"), "wss://u:REDACTED@h/feed?REDACTED");
/// assert_eq!(redact_url("ws://h:9001/"), "ws://h:9001/");
/// ```
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            if u.query().is_some() {
                u.set_query(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "REDACTED".to_owned(),
    }
}
