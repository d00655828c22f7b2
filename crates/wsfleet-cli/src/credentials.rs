//! `run`'s credentials: header and query values fetched at each connection
//! attempt (`--header-command 'NAME: COMMAND'`, `--header-file 'NAME:
//! PATH'`, `--query-command 'NAME=COMMAND'`, `--query-file 'NAME=PATH'`
//! and the config file's keys of the same names, with `--credential-timeout`
//! and `--credential-cache`), read into
//! [`CredentialSpec`]s and built into [`wsfleet::connect::Credential`]s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer};
use wsfleet::connect::{Credential, CredentialSource, Placement};

use crate::cmd::UsageError;

/// One credential as configured: where its value goes and where it comes
/// from. Its timeout and cache duration are the run's
/// (`--credential-timeout`, `--credential-cache`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialSpec {
    /// A header or a query parameter, by name.
    pub(crate) placement: Placement,
    /// A command or a file.
    pub(crate) source: CredentialSource,
}

impl CredentialSpec {
    /// A file source's relative path read from `folder` (the config file's).
    /// A command runs where `wsfleet` runs, whatever the file's folder.
    pub(crate) fn relative_to(self, folder: &Path) -> Self {
        match self.source {
            CredentialSource::File(path) => Self {
                source: CredentialSource::File(folder.join(path)),
                ..self
            },
            CredentialSource::Command(_) => self,
        }
    }

    /// The library's credential, with the run's timeout and cache duration
    /// where set (else the library's defaults, 5 s and 60 s).
    pub(crate) fn build(&self, timeout: Option<Duration>, cache: Option<Duration>) -> Credential {
        let mut credential = Credential::new(self.placement.clone(), self.source.clone());
        if let Some(timeout) = timeout {
            credential = credential.timeout(timeout);
        }
        if let Some(cache) = cache {
            credential = credential.cache(cache);
        }
        credential
    }
}

/// `--header-command 'NAME: COMMAND'`.
pub(crate) fn parse_header_command(spec: &str) -> Result<CredentialSpec, String> {
    let (name, command) = header_halves(spec, "COMMAND")?;
    Ok(CredentialSpec {
        placement: Placement::Header(name),
        source: CredentialSource::Command(command),
    })
}

/// `--header-file 'NAME: PATH'`.
pub(crate) fn parse_header_file(spec: &str) -> Result<CredentialSpec, String> {
    let (name, path) = header_halves(spec, "PATH")?;
    Ok(CredentialSpec {
        placement: Placement::Header(name),
        source: CredentialSource::File(PathBuf::from(path)),
    })
}

/// `--query-command 'NAME=COMMAND'`.
pub(crate) fn parse_query_command(spec: &str) -> Result<CredentialSpec, String> {
    let (name, command) = query_halves(spec, "COMMAND")?;
    Ok(CredentialSpec {
        placement: Placement::Query(name),
        source: CredentialSource::Command(command),
    })
}

/// `--query-file 'NAME=PATH'`.
pub(crate) fn parse_query_file(spec: &str) -> Result<CredentialSpec, String> {
    let (name, path) = query_halves(spec, "PATH")?;
    Ok(CredentialSpec {
        placement: Placement::Query(name),
        source: CredentialSource::File(PathBuf::from(path)),
    })
}

/// `NAME: REST` with NAME an HTTP token and REST not empty, both trimmed.
fn header_halves(spec: &str, rest: &str) -> Result<(String, String), String> {
    let Some((name, value)) = spec.split_once(':') else {
        return Err(format!("expected 'NAME: {rest}', got {spec:?}"));
    };
    let name = name.trim();
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token) {
        return Err(format!("invalid header name {name:?} in {spec:?}"));
    }
    Ok((name.to_owned(), not_empty(value, rest, spec)?))
}

/// `NAME=REST` with NAME and REST not empty, both trimmed (NAME is
/// percent-encoded when sent, so any text goes).
fn query_halves(spec: &str, rest: &str) -> Result<(String, String), String> {
    let Some((name, value)) = spec.split_once('=') else {
        return Err(format!("expected 'NAME={rest}', got {spec:?}"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("empty query parameter name in {spec:?}"));
    }
    Ok((name.to_owned(), not_empty(value, rest, spec)?))
}

fn not_empty(value: &str, what: &str, spec: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("empty {what} in {spec:?}"));
    }
    Ok(value.to_owned())
}

/// Two credentials for one header or query parameter: refused, as the
/// second would silently win.
pub(crate) fn check(specs: &[CredentialSpec]) -> Result<(), UsageError> {
    for (i, spec) in specs.iter().enumerate() {
        let same = |other: &CredentialSpec| match (&spec.placement, &other.placement) {
            (Placement::Header(a), Placement::Header(b)) => a.eq_ignore_ascii_case(b),
            (Placement::Query(a), Placement::Query(b)) => a == b,
            _ => false,
        };
        if let Some(other) = specs[..i].iter().find(|o| same(o)) {
            return Err(UsageError(format!(
                "{} has two credentials ({} and {}): give one",
                spec.placement, other.source, spec.source
            )));
        }
    }
    Ok(())
}

/// Declares a config-file value read with one of the parsers above.
macro_rules! file_value {
    ($(#[$doc:meta])* $name:ident, $parse:path) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(crate) struct $name(pub(crate) CredentialSpec);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $parse(&text).map($name).map_err(de::Error::custom)
            }
        }
    };
}

file_value!(
    /// `header-command = ["NAME: COMMAND"]`.
    HeaderCommand,
    parse_header_command
);
file_value!(
    /// `header-file = ["NAME: PATH"]`.
    HeaderFile,
    parse_header_file
);
file_value!(
    /// `query-command = ["NAME=COMMAND"]`.
    QueryCommand,
    parse_query_command
);
file_value!(
    /// `query-file = ["NAME=PATH"]`.
    QueryFile,
    parse_query_file
);

/// The config file's four credential keys (each an array).
#[derive(Debug, Default)]
pub(crate) struct FileCredentials {
    /// `header-command`.
    pub(crate) header_command: Option<Vec<HeaderCommand>>,
    /// `header-file`.
    pub(crate) header_file: Option<Vec<HeaderFile>>,
    /// `query-command`.
    pub(crate) query_command: Option<Vec<QueryCommand>>,
    /// `query-file`.
    pub(crate) query_file: Option<Vec<QueryFile>>,
}

/// `run`'s credential flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct CredentialArgs {
    /// Request header whose value is a command's output, run (sh -c) at
    /// connection attempts, as 'NAME: COMMAND' (e.g. 'Authorization:
    /// printf "Bearer %s" "$(cat /run/token)"'): a rotated token reaches
    /// new connections without a restart. Trailing newline trimmed; a
    /// failure is a failed connect (phase credential), retried with
    /// backoff. Replaces a --header of the same name; repeat for several.
    #[arg(long = "header-command", value_name = "'NAME: COMMAND'", value_parser = parse_header_command)]
    pub(crate) header_command: Vec<CredentialSpec>,
    /// Request header whose value is a file's contents, read at connection
    /// attempts, as 'NAME: PATH'; repeat for several.
    #[arg(long = "header-file", value_name = "'NAME: PATH'", value_parser = parse_header_file)]
    pub(crate) header_file: Vec<CredentialSpec>,
    /// URL query parameter whose value is a command's output, as
    /// 'NAME=COMMAND' (percent-encoded; replaces a parameter of that name
    /// in the URL); repeat for several.
    #[arg(long = "query-command", value_name = "'NAME=COMMAND'", value_parser = parse_query_command)]
    pub(crate) query_command: Vec<CredentialSpec>,
    /// URL query parameter whose value is a file's contents, as
    /// 'NAME=PATH'; repeat for several.
    #[arg(long = "query-file", value_name = "'NAME=PATH'", value_parser = parse_query_file)]
    pub(crate) query_file: Vec<CredentialSpec>,
    /// How long one credential fetch may take (a command still running is
    /// killed) [default: 5s].
    #[arg(long, value_name = "DUR", value_parser = crate::units::parse_period)]
    pub(crate) credential_timeout: Option<Duration>,
    /// How long a fetched credential is used by later connection attempts;
    /// 0 fetches at every attempt (attempts made together still share one
    /// fetch) [default: 60s].
    #[arg(long, value_name = "DUR", value_parser = crate::units::parse_duration)]
    pub(crate) credential_cache: Option<Duration>,
}

/// Every credential: per key, the flag's list if given, else the file's
/// (its relative file paths read from `folder`).
pub(crate) fn merge(
    flags: CredentialArgs,
    file: FileCredentials,
    folder: &Path,
) -> Vec<CredentialSpec> {
    fn pick<T>(
        flag: Vec<CredentialSpec>,
        file: Option<Vec<T>>,
        folder: &Path,
    ) -> Vec<CredentialSpec>
    where
        T: Into<CredentialSpec>,
    {
        if !flag.is_empty() {
            return flag;
        }
        file.unwrap_or_default()
            .into_iter()
            .map(|v| v.into().relative_to(folder))
            .collect()
    }
    let mut all = pick(flags.header_command, file.header_command, folder);
    all.extend(pick(flags.header_file, file.header_file, folder));
    all.extend(pick(flags.query_command, file.query_command, folder));
    all.extend(pick(flags.query_file, file.query_file, folder));
    all
}

impl From<HeaderCommand> for CredentialSpec {
    fn from(v: HeaderCommand) -> Self {
        v.0
    }
}

impl From<HeaderFile> for CredentialSpec {
    fn from(v: HeaderFile) -> Self {
        v.0
    }
}

impl From<QueryCommand> for CredentialSpec {
    fn from(v: QueryCommand) -> Self {
        v.0
    }
}

impl From<QueryFile> for CredentialSpec {
    fn from(v: QueryFile) -> Self {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_header_command("Authorization: printf 'Bearer %s' \"$(cat t)\"").unwrap(),
            CredentialSpec {
                placement: Placement::Header("Authorization".into()),
                source: CredentialSource::Command("printf 'Bearer %s' \"$(cat t)\"".into()),
            }
        );
        // Only the first separator splits: the rest is the command's.
        assert_eq!(
            parse_query_command("token = get-token --scope=a:b").unwrap(),
            CredentialSpec {
                placement: Placement::Query("token".into()),
                source: CredentialSource::Command("get-token --scope=a:b".into()),
            }
        );
        assert_eq!(
            parse_header_file("X-Token: tok.txt").unwrap().source,
            CredentialSource::File("tok.txt".into())
        );
        assert_eq!(
            parse_query_file("key=/run/key").unwrap().placement,
            Placement::Query("key".into())
        );
        for (bad, says) in [
            (
                parse_header_command("no separator"),
                "expected 'NAME: COMMAND'",
            ),
            (
                parse_header_command("Bad Name: x"),
                "invalid header name \"Bad Name\"",
            ),
            (parse_header_file("X-Token:  "), "empty PATH"),
            (parse_query_command("=cmd"), "empty query parameter name"),
            (parse_query_file("key"), "expected 'NAME=PATH'"),
        ] {
            let e = bad.unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn relative_files_follow_the_config_file_and_commands_do_not() {
        let folder = Path::new("/etc/wsfleet");
        let file = parse_header_file("X: tok").unwrap().relative_to(folder);
        assert_eq!(
            file.source,
            CredentialSource::File("/etc/wsfleet/tok".into())
        );
        let absolute = parse_header_file("X: /run/tok")
            .unwrap()
            .relative_to(folder);
        assert_eq!(absolute.source, CredentialSource::File("/run/tok".into()));
        let command = parse_header_command("X: cat tok")
            .unwrap()
            .relative_to(folder);
        assert_eq!(command.source, CredentialSource::Command("cat tok".into()));
    }

    #[test]
    fn one_credential_per_name() {
        let a = parse_header_command("Authorization: a").unwrap();
        let b = parse_header_file("authorization: b").unwrap();
        let q = parse_query_file("Authorization=c").unwrap();
        check(&[a.clone(), q.clone()]).unwrap();
        let e = check(&[a, q, b]).unwrap_err().to_string();
        assert_eq!(
            e,
            "header \"authorization\" has two credentials (command `a` and file b): give one"
        );
    }

    #[test]
    fn build_keeps_the_defaults_unless_set() {
        let spec = parse_header_command("X: a").unwrap();
        let default = spec.build(None, None);
        assert_eq!(default.fetch_timeout(), Duration::from_secs(5));
        assert_eq!(default.cache_duration(), Duration::from_secs(60));
        let set = spec.build(Some(Duration::from_secs(1)), Some(Duration::ZERO));
        assert_eq!(set.fetch_timeout(), Duration::from_secs(1));
        assert_eq!(set.cache_duration(), Duration::ZERO);
    }
}
