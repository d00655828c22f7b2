//! Fleets of persistent WebSocket client connections on tokio.
