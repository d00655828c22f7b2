//! Real WebSocket peers on loopback for wsfleet tests.
