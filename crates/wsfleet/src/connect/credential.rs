//! [`Credential`]: a header or URL query value fetched at connection
//! attempts from a command or a file, so a rotated token reaches new
//! connections without a restart.
//!
//! A credential is shared by every connection whose
//! [`ConnectionConfig`](crate::ConnectionConfig) holds it (clones share one
//! cache). At a connection attempt its value is taken from the cache while
//! it is fresh ([`Credential::cache`]); otherwise one attempt fetches it
//! while the others wait behind an async mutex and share what it got, so
//! 10,000 connections reconnecting at once run the command once.
//!
//! Bounds: a command's stdout is read up to [`MAX_VALUE`] bytes (more is an
//! error), its stderr up to [`MAX_STDERR`] (the rest is drained and
//! dropped), and the whole fetch, waiting for another attempt's fetch
//! included, within [`Credential::timeout`]; a command still running then
//! is killed (SIGKILL to its shell), and so is one whose attempt is
//! dropped. Only the shell: a process it started (`sleep 9; echo t`: the
//! `sleep`) runs on to its own end, unwaited for (use `exec` for a last
//! command that may hang). A file is read up to [`MAX_VALUE`] bytes within
//! the same timeout.
//!
//! The value is the output with its trailing line ends (`\n`, `\r\n`)
//! trimmed. It must be UTF-8 and not empty (a token file caught half
//! rewritten reads empty); a header value may not hold CR, LF or NUL. A
//! query value is percent-encoded into the URL's query, replacing a
//! parameter of that name or appended.
//!
//! A failed fetch is not cached beyond the attempts that waited for it, and
//! a value whose refresh failed is not served again: a token that could not
//! be renewed may be the expired one, and a connect failure (with backoff)
//! says so where a refused handshake later would not.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The most bytes a value may have (a command's stdout or a file): 16 KiB,
/// more than any token, less than a handshake head may hold.
pub const MAX_VALUE: usize = 16 * 1024;

/// The most bytes of a command's stderr kept for its error message: 4 KiB.
pub const MAX_STDERR: usize = 4 * 1024;

/// The most characters of stderr's first line an error quotes.
const STDERR_LINE: usize = 200;

/// [`Credential::timeout`] unless set: 5 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// [`Credential::cache`] unless set: 60 s.
pub const DEFAULT_CACHE: Duration = Duration::from_secs(60);

/// Where a credential's value goes in the opening request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Placement {
    /// A request header of this name; it replaces a
    /// [`ConnectionConfig::headers`](crate::ConnectionConfig::headers) entry
    /// of the same name (any case).
    Header(String),
    /// A URL query parameter of this name, percent-encoded; it replaces a
    /// parameter of that name in the URL, or is appended.
    Query(String),
}

impl Placement {
    /// The header or parameter name.
    pub fn name(&self) -> &str {
        match self {
            Placement::Header(name) | Placement::Query(name) => name,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Header(name) => write!(f, "header {name:?}"),
            Placement::Query(name) => write!(f, "query parameter {name:?}"),
        }
    }
}

/// Where a credential's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    /// A shell command (`sh -c COMMAND`, stdin empty, environment and
    /// working directory inherited): its stdout on exit status 0.
    Command(String),
    /// A file's contents.
    File(PathBuf),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Command(command) => write!(f, "command `{command}`"),
            CredentialSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A header or query value fetched at connection attempts (see the
/// [module](self)). Clones share one cache.
///
/// ```
/// use std::time::Duration;
/// use wsfleet::ConnectionConfig;
/// use wsfleet::connect::{Credential, CredentialSource, Placement};
///
/// let token = Credential::new(
///     Placement::Header("Authorization".into()),
///     CredentialSource::Command("printf 'Bearer %s' \"$(cat /run/token)\"".into()),
/// )
/// .timeout(Duration::from_secs(2))
/// .cache(Duration::from_secs(30));
/// let config = ConnectionConfig::default().credential(token);
/// assert_eq!(config.credentials.len(), 1);
/// ```
#[derive(Clone)]
pub struct Credential {
    placement: Placement,
    source: CredentialSource,
    timeout: Duration,
    cache: Duration,
    /// The last fetch, behind the mutex one fetch at a time holds.
    last: Arc<Mutex<Option<Fetched>>>,
}

impl Credential {
    /// A credential put at `placement`, from `source`, with the default
    /// timeout (5 s) and cache duration (60 s).
    pub fn new(placement: Placement, source: CredentialSource) -> Self {
        Self {
            placement,
            source,
            timeout: DEFAULT_TIMEOUT,
            cache: DEFAULT_CACHE,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// How long one fetch may take, waiting for another attempt's fetch
    /// included; a command still running then is killed. Default 5 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a fetched value is used by later attempts. Zero: every
    /// attempt fetches, except those that waited for a fetch under way,
    /// which share it. Default 60 s.
    #[must_use]
    pub fn cache(mut self, cache: Duration) -> Self {
        self.cache = cache;
        self
    }

    /// Where the value goes.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Where the value comes from.
    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    /// The fetch timeout.
    pub fn fetch_timeout(&self) -> Duration {
        self.timeout
    }

    /// The cache duration.
    pub fn cache_duration(&self) -> Duration {
        self.cache
    }

    /// The value for a connection attempt: cached while fresh, else fetched
    /// by this attempt or shared from the one under way.
    ///
    /// # Errors
    /// A [`CredentialError`] naming this credential, its source and what
    /// went wrong.
    pub async fn value(&self) -> Result<Arc<str>, CredentialError> {
        let asked = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.value_within(asked)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Problem::Timeout(self.timeout)),
        };
        outcome.map_err(|problem| CredentialError {
            placement: self.placement.clone(),
            source: self.source.clone(),
            problem,
        })
    }

    async fn value_within(&self, asked: Instant) -> Result<Arc<str>, Problem> {
        let mut last = self.last.lock().await;
        if let Some(fetched) = last.as_ref()
            && reusable(fetched, asked, Instant::now(), self.cache)
        {
            return fetched.outcome.clone();
        }
        // Dropped mid-fetch (the attempt abandoned, or the timeout above),
        // the fetch is dropped too (a command killed) and `last` stays as
        // it was: the next waiter fetches.
        let outcome = fetch(&self.source)
            .await
            .and_then(|bytes| clean(bytes, &self.placement));
        *last = Some(Fetched {
            at: Instant::now(),
            outcome: outcome.clone(),
        });
        outcome
    }
}

impl fmt::Debug for Credential {
    /// Never the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("placement", &self.placement)
            .field("source", &self.source)
            .field("timeout", &self.timeout)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// One finished fetch.
struct Fetched {
    /// When it finished.
    at: Instant,
    outcome: Result<Arc<str>, Problem>,
}

/// Whether an attempt that asked at `asked` takes `fetched` instead of
/// fetching: it finished after the attempt asked (the attempt waited for
/// it: success or failure, it is shared), or it is a value younger than
/// `cache`.
fn reusable(fetched: &Fetched, asked: Instant, now: Instant, cache: Duration) -> bool {
    fetched.at >= asked
        || (fetched.outcome.is_ok() && now.saturating_duration_since(fetched.at) < cache)
}

/// What went wrong fetching a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The command could not be started.
    Spawn(String),
    /// The command exited unsuccessfully: its status (`status 1`, `signal
    /// 9`) and the first line of its stderr.
    Exited {
        /// `status N` or `signal N`.
        status: String,
        /// Stderr's first non-empty line, at most 200 characters.
        stderr: String,
    },
    /// The file could not be read.
    Read(String),
    /// The fetch (or waiting for another's) did not finish in time.
    Timeout(Duration),
    /// The output is longer than [`MAX_VALUE`] bytes.
    TooLong,
    /// The output is not UTF-8.
    NotUtf8,
    /// The value is empty (after trimming the line end).
    Empty,
    /// A header value holds CR, LF or NUL (at this byte offset).
    ForbiddenByte {
        /// The byte.
        byte: u8,
        /// Where.
        at: usize,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Spawn(e) => write!(f, "could not start: {e}"),
            Problem::Exited { status, stderr } if stderr.is_empty() => {
                write!(f, "exited with {status}")
            }
            Problem::Exited { status, stderr } => write!(f, "exited with {status}: {stderr}"),
            Problem::Read(e) => write!(f, "could not be read: {e}"),
            Problem::Timeout(after) => write!(f, "did not finish within {after:?}"),
            Problem::TooLong => write!(f, "gave more than {MAX_VALUE} bytes"),
            Problem::NotUtf8 => f.write_str("gave a value that is not UTF-8"),
            Problem::Empty => f.write_str("gave an empty value"),
            Problem::ForbiddenByte { byte, at } => write!(
                f,
                "gave a value with byte 0x{byte:02x} at {at} (CR, LF and NUL cannot go in a header)"
            ),
        }
    }
}

/// A credential could not be fetched: which one, from where, and why.
///
/// Displays as `credential header "Authorization" (command `get-token`):
/// exited with status 1: no session`; never holds the value.
#[derive(Debug, Clone)]
pub struct CredentialError {
    placement: Placement,
    source: CredentialSource,
    problem: Problem,
}

impl CredentialError {
    /// Where the value was to go.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Where it was to come from.
    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    /// What went wrong.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "credential {} ({}): {}",
            self.placement, self.source, self.problem
        )
    }
}

impl std::error::Error for CredentialError {}

/// The values of every credential of a configuration, for one attempt.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    /// Header name and value, in configuration order.
    pub(crate) headers: Vec<(String, Arc<str>)>,
}

impl Resolved {
    /// Whether a credential header replaces a configured header `name`.
    pub(crate) fn replaces(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(h, _)| h.trim().eq_ignore_ascii_case(name.trim()))
    }
}

/// Fetches every credential in order (each within its timeout): the
/// headers to add, and `path_and_query` with the query values set.
pub(crate) async fn resolve(
    credentials: &[Credential],
    path_and_query: &mut String,
) -> Result<Resolved, CredentialError> {
    let mut resolved = Resolved::default();
    for credential in credentials {
        let value = credential.value().await?;
        match &credential.placement {
            Placement::Header(name) => resolved.headers.push((name.clone(), value)),
            Placement::Query(name) => *path_and_query = set_query(path_and_query, name, &value),
        }
    }
    Ok(resolved)
}

/// Reads `source`, at most [`MAX_VALUE`] bytes.
async fn fetch(source: &CredentialSource) -> Result<Vec<u8>, Problem> {
    match source {
        CredentialSource::Command(command) => run(command).await,
        CredentialSource::File(path) => {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| Problem::Read(e.to_string()))?;
            let (bytes, whole) = read_bounded(&mut file, MAX_VALUE)
                .await
                .map_err(|e| Problem::Read(e.to_string()))?;
            if whole {
                Ok(bytes)
            } else {
                Err(Problem::TooLong)
            }
        }
    }
}

/// Runs `sh -c command`: its stdout (at most [`MAX_VALUE`] bytes) on
/// success. The child is killed when this future is dropped (timeout,
/// abandoned attempt) or its output is too long.
async fn run(command: &str) -> Result<Vec<u8>, Problem> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Problem::Spawn(e.to_string()))?;
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Problem::Spawn("no pipe to the child".into()));
    };
    // Stdout past its bound ends the run at once (`try_join!` drops the
    // stderr read, `child` is killed as it drops); stderr is drained to its
    // end, so the child never blocks on a full pipe.
    let stdout = async {
        match read_bounded(&mut stdout, MAX_VALUE).await {
            Ok((out, true)) => Ok(out),
            Ok((_, false)) => Err(Problem::TooLong),
            Err(e) => Err(Problem::Spawn(format!("reading its output: {e}"))),
        }
    };
    let stderr = async { Ok::<_, Problem>(read_draining(stderr, MAX_STDERR).await) };
    let (out, err) = tokio::try_join!(stdout, stderr)?;
    let status = child
        .wait()
        .await
        .map_err(|e| Problem::Spawn(format!("waiting for it: {e}")))?;
    if status.success() {
        return Ok(out);
    }
    Err(Problem::Exited {
        status: describe_status(status),
        stderr: first_line(&err),
    })
}

/// `status N` or `signal N`.
fn describe_status(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("status {code}"),
        None => status.to_string(),
    }
}

/// Reads `reader` to its end or to `max` bytes and one more: the bytes (at
/// most `max`), and whether they are all of it.
async fn read_bounded<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    reader.take(max as u64 + 1).read_to_end(&mut kept).await?;
    if kept.len() <= max {
        return Ok((kept, true));
    }
    kept.truncate(max);
    Ok((kept, false))
}

/// Reads `reader` to its end, keeping its first `max` bytes: the rest is
/// read and dropped, so a writer never blocks on a full pipe.
async fn read_draining<R: AsyncRead + Unpin>(mut reader: R, max: usize) -> Vec<u8> {
    match read_bounded(&mut reader, max).await {
        Ok((kept, true)) => kept,
        Ok((kept, false)) => {
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
            kept
        }
        Err(_) => Vec::new(),
    }
}

/// The value in `bytes`: UTF-8, trailing line ends trimmed, not empty,
/// and for a header without CR, LF or NUL.
fn clean(bytes: Vec<u8>, placement: &Placement) -> Result<Arc<str>, Problem> {
    let text = String::from_utf8(bytes).map_err(|_| Problem::NotUtf8)?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(Problem::Empty);
    }
    if let Placement::Header(_) = placement
        && let Some(at) = value.bytes().position(|b| matches!(b, b'\r' | b'\n' | 0))
    {
        return Err(Problem::ForbiddenByte {
            byte: value.as_bytes()[at],
            at,
        });
    }
    Ok(Arc::from(value))
}

/// The first non-empty line of `stderr`, trimmed, at most
/// [`STDERR_LINE`] characters (lossy UTF-8).
fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match line.char_indices().nth(STDERR_LINE) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// What a query name or value keeps unencoded: RFC 3986's unreserved
/// characters (letters, digits, `-._~`).
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `path_and_query` with parameter `name` set to `value` (both
/// percent-encoded): the first parameter of that name (compared decoded)
/// takes the value and later ones go; with none, it is appended.
pub(crate) fn set_query(path_and_query: &str, name: &str, value: &str) -> String {
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY_COMPONENT).to_string();
    let pair = format!("{}={}", encode(name), encode(value));
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, query),
        None => (path_and_query, ""),
    };
    let mut params: Vec<String> = Vec::new();
    let mut placed = false;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let key = param.split_once('=').map_or(param, |(k, _)| k);
        if decode(key) == name {
            if !placed {
                params.push(pair.clone());
                placed = true;
            }
        } else {
            params.push(param.to_owned());
        }
    }
    if !placed {
        params.push(pair);
    }
    format!("{path}?{}", params.join("&"))
}

/// A query key decoded as forms encode it (`+` is a space).
fn decode(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Placement {
        Placement::Header("Authorization".into())
    }

    fn command(cmd: &str) -> Credential {
        Credential::new(header(), CredentialSource::Command(cmd.into()))
    }

    #[test]
    fn values_are_trimmed_checked_and_never_empty() {
        assert_eq!(&*clean(b"tok\n".to_vec(), &header()).unwrap(), "tok");
        assert_eq!(&*clean(b"tok\r\n\n".to_vec(), &header()).unwrap(), "tok");
        // Inner and leading spaces are the value's own.
        assert_eq!(&*clean(b" a b\n".to_vec(), &header()).unwrap(), " a b");
        assert_eq!(clean(b"\n".to_vec(), &header()), Err(Problem::Empty));
        assert_eq!(clean(vec![0xff, b'a'], &header()), Err(Problem::NotUtf8));
        assert_eq!(
            clean(b"a\nInjected: 1\n".to_vec(), &header()),
            Err(Problem::ForbiddenByte { byte: b'\n', at: 1 })
        );
        assert_eq!(
            clean(b"a\0b".to_vec(), &header()),
            Err(Problem::ForbiddenByte { byte: 0, at: 1 })
        );
        // A query value is encoded, so any byte may go there.
        let query = Placement::Query("t".into());
        assert_eq!(&*clean(b"a\nb\n".to_vec(), &query).unwrap(), "a\nb");
    }

    #[test]
    fn query_values_are_encoded_and_replace_their_parameter() {
        assert_eq!(set_query("/", "token", "a b/c"), "/?token=a%20b%2Fc");
        assert_eq!(set_query("/feed?v=2", "token", "x"), "/feed?v=2&token=x");
        assert_eq!(
            set_query("/feed?token=old&v=2&token=older", "token", "new&=?"),
            "/feed?token=new%26%3D%3F&v=2"
        );
        // Compared decoded: `my%20key` and `my+key` are "my key".
        assert_eq!(set_query("/?my+key=1&b", "my key", "2"), "/?my%20key=2&b");
        assert_eq!(set_query("/?", "k", "-._~"), "/?k=-._~");
        assert_eq!(
            set_query("/?a=1", "ключ", "é"),
            "/?a=1&%D0%BA%D0%BB%D1%8E%D1%87=%C3%A9"
        );
    }

    #[test]
    fn stderr_gives_its_first_line_bounded() {
        assert_eq!(first_line(b"\n  \n no session \nmore"), "no session");
        assert_eq!(first_line(b""), "");
        let long = "x".repeat(STDERR_LINE + 50);
        let line = first_line(long.as_bytes());
        assert_eq!(line.chars().count(), STDERR_LINE + 1, "{line}");
        assert!(line.ends_with('…'));
    }

    #[test]
    fn a_fetch_is_shared_by_those_who_waited_and_a_value_while_fresh() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let ok = Fetched {
            at: t0 + secs(1),
            outcome: Ok(Arc::from("v")),
        };
        let failed = Fetched {
            at: t0 + secs(1),
            outcome: Err(Problem::Empty),
        };
        let cache = secs(10);
        // Asked before it finished: shared, whatever it was.
        assert!(reusable(&ok, t0, t0 + secs(100), cache));
        assert!(reusable(&failed, t0, t0 + secs(100), Duration::ZERO));
        // Asked after: a value while fresh, a failure never.
        let later = t0 + secs(2);
        assert!(reusable(&ok, later, later, cache));
        assert!(!reusable(&ok, later, t0 + secs(11), cache));
        assert!(!reusable(&ok, later, later, Duration::ZERO));
        assert!(!reusable(&failed, later, later, cache));
    }

    #[tokio::test]
    async fn a_command_gives_its_stdout() {
        let value = command("echo 'Bearer abc'").value().await.unwrap();
        assert_eq!(&*value, "Bearer abc");
    }

    #[tokio::test]
    async fn a_failing_command_names_itself_its_status_and_stderr() {
        let e = command("echo no session >&2; echo ignored; exit 3")
            .value()
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "credential header \"Authorization\" (command `echo no session >&2; echo ignored; \
             exit 3`): exited with status 3: no session"
        );
        assert!(matches!(e.problem(), Problem::Exited { .. }));
    }

    #[tokio::test]
    async fn a_slow_command_is_killed_at_its_timeout() {
        let dir = tempdir();
        let marker = dir.join("still-running");
        let cmd = format!("sleep 2; touch {}", marker.display());
        let started = std::time::Instant::now();
        let e = command(&cmd)
            .timeout(Duration::from_millis(200))
            .value()
            .await
            .unwrap_err();
        assert_eq!(e.problem(), &Problem::Timeout(Duration::from_millis(200)));
        assert!(started.elapsed() < Duration::from_secs(2), "{e}");
        assert!(
            e.to_string().ends_with("did not finish within 200ms"),
            "{e}"
        );
        // The shell was killed: it never gets to touch the marker.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the command outlived its timeout");
    }

    #[tokio::test]
    async fn output_over_the_bound_is_refused() {
        let cmd = format!("head -c {} /dev/zero | tr '\\0' a", MAX_VALUE + 1);
        let e = command(&cmd).value().await.unwrap_err();
        assert_eq!(e.problem(), &Problem::TooLong, "{e}");
        let cmd = format!("head -c {MAX_VALUE} /dev/zero | tr '\\0' a");
        assert_eq!(command(&cmd).value().await.unwrap().len(), MAX_VALUE);
        // Endless output ends the run at once, not at the timeout.
        let started = std::time::Instant::now();
        let e = command("yes").value().await.unwrap_err();
        assert_eq!(e.problem(), &Problem::TooLong, "{e}");
        assert!(started.elapsed() < DEFAULT_TIMEOUT / 2, "{e}");
        // Stderr past its bound is drained, not a reason to block.
        let cmd = "head -c 1000000 /dev/zero >&2; echo ok";
        assert_eq!(&*command(cmd).value().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn a_file_is_read_and_missing_one_named() {
        let dir = tempdir();
        let path = dir.join("token");
        std::fs::write(&path, "t1\n").unwrap();
        let file = Credential::new(
            Placement::Query("token".into()),
            CredentialSource::File(path.clone()),
        )
        .cache(Duration::ZERO);
        assert_eq!(&*file.value().await.unwrap(), "t1");
        std::fs::write(&path, "t2\n").unwrap();
        assert_eq!(&*file.value().await.unwrap(), "t2");
        std::fs::remove_file(&path).unwrap();
        let e = file.value().await.unwrap_err();
        assert!(matches!(e.problem(), Problem::Read(_)), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "credential query parameter \"token\" (file {}): could not be read: ",
                path.display()
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn within_the_cache_one_run_serves_many_and_a_failure_is_not_kept() {
        let dir = tempdir();
        let runs = dir.join("runs");
        let cmd = format!("echo run >> {}; sleep 0.2; echo tok", runs.display());
        let credential = command(&cmd).cache(Duration::from_secs(60));
        let waits: Vec<_> = (0..50)
            .map(|_| {
                let c = credential.clone();
                tokio::spawn(async move { c.value().await })
            })
            .collect();
        for wait in waits {
            assert_eq!(&*wait.await.unwrap().unwrap(), "tok");
        }
        assert_eq!(&*credential.value().await.unwrap(), "tok");
        let count = std::fs::read_to_string(&runs).unwrap().lines().count();
        assert_eq!(count, 1, "runs within the cache window");

        // A failure is shared by those who waited for it, then fetched anew.
        let flag = dir.join("fail");
        std::fs::write(&flag, "").unwrap();
        let cmd = format!("test -e {} && exit 1; echo fine", flag.display());
        let flaky = command(&cmd).cache(Duration::from_secs(60));
        assert!(flaky.value().await.is_err());
        std::fs::remove_file(&flag).unwrap();
        assert_eq!(&*flaky.value().await.unwrap(), "fine");
    }

    /// A fresh folder under the system's temporary one, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn join(&self, file: &str) -> PathBuf {
            self.0.join(file)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "wsfleet-credential-{}-{}",
            std::process::id(),
            crate::rng::SmallRng::from_os().next_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
