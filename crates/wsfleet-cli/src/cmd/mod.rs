//! The subcommands, each in its own module, and what they share: the
//! runtime and shutdown on SIGINT/SIGTERM.

mod connect;
mod escape;
mod run;
mod serve;
mod status;
mod top;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use wsfleet::connect::{ClientIdentity, Proxy, ProxySetting, Roots, TlsOptions};
use wsfleet::proto::deflate::DeflateConfig;
use wsfleet::{ConnectionConfig, Limits};

use crate::cli::Command;

/// How long the runtime waits for leftover tasks once a command is done.
/// Reading stdin blocks a thread that cannot be interrupted, so the runtime
/// must not wait for it.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(200);

/// Runs `command` on a fresh multi-threaded tokio runtime.
///
/// # Errors
/// Whatever the command failed with.
pub(crate) fn execute(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let result = runtime.block_on(async move {
        match command {
            Command::Run(args) => run::run(args).await,
            Command::Connect(args) => connect::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Top(args) => top::run(args).await,
            Command::Status(args) => status::run(args).await,
        }
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// Default limits, with `--max-message` applied (to messages and frames).
///
/// # Errors
/// If the limit is out of range (for example below 125 bytes).
pub(crate) fn limits(max_message: Option<usize>) -> anyhow::Result<Limits> {
    let mut limits = Limits::default();
    if let Some(max) = max_message {
        limits = limits
            .with_max_message(max)
            .with_max_frame_payload(limits.max_frame_payload.min(max));
    }
    if let Err(e) = limits.validate() {
        return usage_error(format!("invalid --max-message: {e}"));
    }
    Ok(limits)
}

/// How connections reach their server, as the flags (and, for `run`, the
/// config file) set it: TLS trust and identity, Origin, compression, proxy
/// and redirects. Shared by `run` and `connect`.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Transport {
    /// Extra CA files to trust.
    pub(crate) ca_files: Vec<PathBuf>,
    /// Skip TLS verification.
    pub(crate) insecure: bool,
    /// Start from the OS trust store instead of the built-in roots.
    pub(crate) native_roots: bool,
    /// Client certificate chain (mutual TLS).
    pub(crate) client_cert: Option<PathBuf>,
    /// Its private key.
    pub(crate) client_key: Option<PathBuf>,
    /// `Origin` header, if any.
    pub(crate) origin: Option<String>,
    /// Offer permessage-deflate.
    pub(crate) deflate: bool,
    /// Proxy URL for every connection, if set.
    pub(crate) proxy: Option<String>,
    /// Ignore the *_PROXY environment.
    pub(crate) no_proxy: bool,
    /// Redirects to follow in a row.
    pub(crate) max_redirects: u8,
    /// Headers still sent after a redirect left the configured origin.
    pub(crate) redirect_forward: Vec<String>,
    /// The configured TLS on other origins too.
    pub(crate) redirect_keep_tls: bool,
}

impl Transport {
    /// Settings that are each fine but do not fit together.
    pub(crate) fn check(&self) -> Result<(), UsageError> {
        if self.proxy.is_some() && self.no_proxy {
            return Err(UsageError(
                "proxy and no-proxy contradict each other: set one".into(),
            ));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err(UsageError(
                "client-cert needs client-key (the certificate's private key)".into(),
            )),
            (None, Some(_)) => Err(UsageError(
                "client-key needs client-cert (the certificate it belongs to)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Applies these settings to `config`.
    ///
    /// # Errors
    /// A [`UsageError`] for a proxy URL that does not parse, settings that
    /// contradict each other, or TLS files that cannot be used (naming the
    /// file).
    pub(crate) fn apply(&self, mut config: ConnectionConfig) -> anyhow::Result<ConnectionConfig> {
        self.check()?;
        let default_tls = self.ca_files.is_empty()
            && !self.insecure
            && !self.native_roots
            && self.client_cert.is_none();
        if !default_tls {
            let mut tls = TlsOptions::default();
            if self.native_roots {
                tls.roots = Roots::Native;
            }
            tls.extra_ca_files.clone_from(&self.ca_files);
            tls.insecure_skip_verify = self.insecure;
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls.client_identity = Some(ClientIdentity::new(cert, key));
            }
            match tls.build() {
                Ok(tls) => config = config.tls(tls),
                // `{:#}`: the error and its sources (the cause is a source).
                Err(e) => {
                    let e = anyhow::Error::new(e);
                    return usage_error(format!("cannot set up TLS: {e:#}"));
                }
            }
        }
        if let Some(origin) = &self.origin {
            config = config.origin(origin.clone());
        }
        if self.deflate {
            config = config.deflate(DeflateConfig::default());
        }
        if let Some(url) = &self.proxy {
            match Proxy::parse(url) {
                Ok(proxy) => config = config.proxy(ProxySetting::Use(proxy)),
                // `e` names the URL without its password; `url` would not.
                Err(e) => return usage_error(format!("invalid proxy: {e}")),
            }
        } else if self.no_proxy {
            config = config.proxy(ProxySetting::Direct);
        }
        let mut config = config
            .max_redirects(self.max_redirects)
            .keep_tls_on_redirect(self.redirect_keep_tls);
        for name in &self.redirect_forward {
            config = config.forward_on_redirect(name.clone());
        }
        Ok(config)
    }
}

/// Waits for SIGINT or SIGTERM. The handlers are installed when this is
/// created, so a signal that arrives before [`Signals::recv`] is awaited is
/// not lost (and does not kill the process).
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// If the OS refuses to install a signal handler.
    pub(crate) fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Resolves at the next SIGINT or SIGTERM, with its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// An error in what the user asked for, found after the command line was
/// parsed (a config file, a combination of settings): `wsfleet` exits with
/// status 2 for it, as clap does for a bad flag.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Fails with a [`UsageError`] saying `message`.
pub(crate) fn usage_error<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(message.into()).into())
}
