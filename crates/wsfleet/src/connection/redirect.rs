//! Following a redirect answer to the opening handshake: where to go next,
//! and what the next request may carry. No I/O: `Connection::connect_target`
//! loops over it.

use crate::connect::{ConnectError, ConnectErrorKind, Phase, Scheme, Target};

/// Statuses that mean "ask there instead". 300 (a choice), 304 (not
/// modified) and 305 (use proxy, deprecated) are not followed.
const FOLLOWED: [u16; 5] = [301, 302, 303, 307, 308];

/// The next hop of a redirect from `from`, answered with `status` and
/// `location`.
///
/// `location` may be absolute (`ws`, `wss`, or `http`/`https`, which name
/// the same endpoints: a server that redirects its HTTP routes writes those)
/// or relative to `from`.
///
/// # Errors
/// [`ConnectErrorKind::Redirect`] when the status is not one that is
/// followed, `Location` is missing or unusable, or the hop would leave TLS
/// (`wss` → `ws`: the rest of the session would travel in clear text).
pub(crate) fn next_hop(
    from: &Target,
    status: u16,
    location: Option<&str>,
) -> Result<Target, ConnectError> {
    let refuse = |location: &str, reason: String| {
        ConnectError::new(
            Phase::Handshake,
            from.authority(),
            ConnectErrorKind::Redirect {
                status,
                location: location.to_owned(),
                reason,
            },
        )
    };
    let Some(location) = location else {
        return Err(refuse("", "the answer has no Location header".into()));
    };
    if !FOLLOWED.contains(&status) {
        return Err(refuse(location, format!("status {status} is not followed")));
    }
    let base = url::Url::parse(&from.to_string())
        .map_err(|e| refuse(location, format!("the current URL does not parse: {e}")))?;
    let mut next = base
        .join(location)
        .map_err(|e| refuse(location, format!("not a URL: {e}")))?;
    let scheme = match next.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(refuse(
                location,
                format!("scheme {other:?} is not ws, wss, http or https"),
            ));
        }
    };
    if next.scheme() != scheme {
        // `Url::set_scheme` refuses special-to-special changes only when
        // the port would no longer fit; ws/http and wss/https share theirs.
        let rest = &next.as_str()[next.scheme().len()..];
        next = url::Url::parse(&format!("{scheme}{rest}"))
            .map_err(|e| refuse(location, format!("not a URL: {e}")))?;
    }
    // A redirect may not carry the client off to a fragment either.
    next.set_fragment(None);
    let target = Target::parse(next.as_str()).map_err(|e| refuse(location, e.to_string()))?;
    if from.scheme == Scheme::Wss && target.scheme == Scheme::Ws {
        return Err(refuse(
            location,
            "it leaves TLS (wss to ws); the rest would travel in clear text".into(),
        ));
    }
    Ok(target)
}

/// Whether `a` and `b` are the same origin (scheme, host and port).
pub(crate) fn same_origin(a: &Target, b: &Target) -> bool {
    a.scheme == b.scheme && a.host == b.host && a.port == b.port
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    fn reason(e: &ConnectError) -> &str {
        match e.kind() {
            ConnectErrorKind::Redirect { reason, .. } => reason,
            other => panic!("expected Redirect, got {other:?}"),
        }
    }

    #[test]
    fn locations_resolve_like_a_browser() {
        let from = t("ws://example.com:8080/a/b?x=1");
        let cases = [
            ("/c", "ws://example.com:8080/c"),
            ("c?y=2", "ws://example.com:8080/a/c?y=2"),
            ("//other.example/d", "ws://other.example/d"),
            ("wss://secure.example/e", "wss://secure.example/e"),
            ("http://example.com:8080/f", "ws://example.com:8080/f"),
            ("https://example.com/g#frag", "wss://example.com/g"),
        ];
        for (location, want) in cases {
            let next = next_hop(&from, 302, Some(location)).unwrap();
            assert_eq!(next.to_string(), want, "{location}");
        }
    }

    #[test]
    fn refusals_say_why() {
        let from = t("wss://example.com/");
        let e = next_hop(&from, 301, Some("ws://example.com/")).unwrap_err();
        assert!(reason(&e).contains("leaves TLS"), "{e}");
        assert!(e.to_string().contains("ws://example.com/"), "{e}");
        let e = next_hop(&from, 301, Some("http://example.com/")).unwrap_err();
        assert!(reason(&e).contains("leaves TLS"), "{e}");
        let e = next_hop(&from, 302, None).unwrap_err();
        assert!(reason(&e).contains("no Location"), "{e}");
        let e = next_hop(&from, 300, Some("/x")).unwrap_err();
        assert!(reason(&e).contains("300 is not followed"), "{e}");
        let e = next_hop(&from, 307, Some("ftp://example.com/")).unwrap_err();
        assert!(reason(&e).contains("\"ftp\""), "{e}");
        let e = next_hop(&from, 307, Some("wss://user:pw@example.com/")).unwrap_err();
        assert!(reason(&e).contains("credentials"), "{e}");
        assert_eq!(e.phase(), Phase::Handshake);
    }

    #[test]
    fn origins() {
        assert!(same_origin(&t("ws://a:1/x"), &t("ws://a:1/y")));
        assert!(!same_origin(&t("ws://a:1/"), &t("ws://a:2/")));
        assert!(!same_origin(&t("ws://a/"), &t("wss://a/")));
        assert!(!same_origin(&t("ws://a/"), &t("ws://b/")));
    }
}
