//! Autobahn TestSuite client driver: runs every case of a fuzzing server
//! (`kosoku -m fuzzingserver 127.0.0.1:9001`), echoing each message back
//! (text as text, binary as binary), then asks the server to write reports.
//!
//! ```text
//! cargo run --release -p wsfleet --example autobahn_client -- ws://127.0.0.1:9001 [AGENT]
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use wsfleet::connect::Deadlines;
use wsfleet::proto::deflate::DeflateConfig;
use wsfleet::{Connection, ConnectionConfig, Keepalive, Message};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let agent = args.next().unwrap_or_else(|| "wsfleet".to_owned());
    let base = base.trim_end_matches('/');
    // permessage-deflate offered as wsfleet's default offer (no context
    // takeover either way, `client_max_window_bits` open), which every 12.*
    // and 13.* server accept function takes; `AUTOBAHN_NO_DEFLATE=1` turns it off.
    let mut config = ConnectionConfig::default();
    if std::env::var_os("AUTOBAHN_NO_DEFLATE").is_none() {
        config = config.deflate(DeflateConfig::default().with_threshold(0));
    }
    let config = config
        .keepalive(Keepalive::default().with_interval(None))
        .deadlines(Deadlines::default().with_close(Duration::from_secs(3)));

    let count = match case_count(base, &config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("autobahn_client: cannot read the case count from {base}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("autobahn_client: running {count} cases against {base} as agent {agent:?}");
    let started = Instant::now();
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        match Connection::connect(&url, &config).await {
            Ok(mut conn) => echo(&mut conn).await,
            Err(e) => eprintln!("case {case}: connect failed: {e}"),
        }
        if case % 50 == 0 || case == count {
            eprintln!(
                "autobahn_client: {case}/{count} cases done ({:.0?})",
                started.elapsed()
            );
        }
    }
    let url = format!("{base}/updateReports?agent={agent}");
    match Connection::connect(&url, &config).await {
        Ok(mut conn) => while let Some(Ok(_)) = conn.recv().await {},
        Err(e) => {
            eprintln!("autobahn_client: updateReports failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

async fn case_count(
    base: &str,
    config: &ConnectionConfig,
) -> Result<u32, Box<dyn std::error::Error>> {
    let mut conn = Connection::connect(&format!("{base}/getCaseCount"), config).await?;
    let count = match conn.recv().await {
        Some(Ok(Message::Text(t))) => t.trim().parse()?,
        other => return Err(format!("unexpected answer {other:?}").into()),
    };
    while let Some(Ok(_)) = conn.recv().await {}
    Ok(count)
}

async fn echo(conn: &mut Connection) {
    while let Some(result) = conn.recv().await {
        match result {
            Ok(message) => {
                if conn.send(message).await.is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = conn.flush().await;
}
