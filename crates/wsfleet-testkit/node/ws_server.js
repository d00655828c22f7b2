#!/usr/bin/env node
// A WebSocket server peer for wsfleet's integration tests (Node.js `ws`).
//
// Started by `wsfleet_testkit::NodeServer`; runnable by hand too (after
// scripts/setup-node has installed node_modules beside this file):
//
//     node crates/wsfleet-testkit/node/ws_server.js [--deflate] [--port N] MODE [ARGS]
//
// Modes, as in py/ws_server.py (one per server; every connection gets the same
// treatment):
//
//     echo                  echo every message back with the same type
//     silent                after the handshake stop reading entirely: pings are
//                           never answered, nothing is ever sent
//     close CODE [REASON]   close right after the handshake with CODE and REASON;
//                           a CODE that `ws` refuses to send (1005, 999, 2000, ...)
//                           is written as a raw close frame instead
//     subprotocol NAME      accept subprotocol NAME, then echo; a client that does
//                           not offer NAME is refused with HTTP 400
//     headers               send one text message, a JSON object of the request
//                           headers (names lowercased, repeats joined by ", ")
//                           and the request target as ":path" and the
//                           client's address (IP:PORT) as ":peer", then echo
//
// Binds 127.0.0.1 (port 0 = the OS picks unless --port), then prints exactly one
// line `LISTENING <port>` on stdout; everything else goes to stderr. Messages up
// to 64 MiB (`maxPayload`). permessage-deflate only with --deflate, and then for
// every message however short (threshold 0), so the client's inflater sees the
// edge cases (empty and one-byte messages). With --exit-on-stdin-eof the server
// exits when its stdin closes, so it never outlives the test process that
// started it, even after a SIGKILL.

'use strict';

const { WebSocketServer } = require('ws');

const MAX_SIZE = 64 * 1024 * 1024;

function usage(message) {
  process.stderr.write(`ws_server.js: ${message}\n`);
  process.stderr.write(
    'usage: ws_server.js [--deflate] [--port N] [--exit-on-stdin-eof] ' +
      '(echo | silent | close CODE [REASON] | subprotocol NAME | headers)\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = { port: 0, deflate: false, exitOnStdinEof: false, mode: null, rest: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (args.mode === null && a === '--port') {
      args.port = Number(argv[++i]);
      if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) usage('bad --port');
    } else if (args.mode === null && a === '--deflate') {
      args.deflate = true;
    } else if (args.mode === null && a === '--exit-on-stdin-eof') {
      args.exitOnStdinEof = true;
    } else if (args.mode === null) {
      args.mode = a;
    } else {
      args.rest.push(a);
    }
  }
  switch (args.mode) {
    case 'echo':
    case 'silent':
    case 'headers':
      if (args.rest.length) usage(`mode ${args.mode} takes no arguments`);
      break;
    case 'close':
      if (args.rest.length < 1 || args.rest.length > 2 || !/^\d+$/.test(args.rest[0])) {
        usage('usage: close CODE [REASON]');
      }
      args.code = Number(args.rest[0]);
      args.reason = args.rest[1] || '';
      if (args.code > 0xffff || Buffer.byteLength(args.reason) > 123) {
        usage('close CODE must fit in u16 and REASON in 123 bytes');
      }
      break;
    case 'subprotocol':
      if (args.rest.length !== 1) usage('usage: subprotocol NAME');
      args.subprotocol = args.rest[0];
      break;
    default:
      usage(`unknown mode ${JSON.stringify(args.mode)}`);
  }
  return args;
}

function offeredProtocols(req) {
  return (req.headers['sec-websocket-protocol'] || '')
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
}

function echo(ws) {
  // `ws` keeps the order of sends, compressed or not.
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
}

// The close codes `ws` itself agrees to send (its isValidStatusCode).
function sendableCode(code) {
  return (
    (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) ||
    (code >= 3000 && code <= 4999)
  );
}

function close(ws, code, reason) {
  if (sendableCode(code)) {
    ws.close(code, reason);
    return;
  }
  // Write the frame ourselves (server frames are unmasked), then give the peer
  // time to react and drop us.
  const payload = Buffer.concat([Buffer.from([code >> 8, code & 0xff]), Buffer.from(reason)]);
  ws._socket.write(Buffer.concat([Buffer.from([0x88, payload.length]), payload]));
  setTimeout(() => ws.terminate(), 10_000).unref();
}

function headers(ws, req) {
  const table = {};
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const key = raw[i].toLowerCase();
    table[key] = key in table ? `${table[key]}, ${raw[i + 1]}` : raw[i + 1];
  }
  table[':path'] = req.url;
  table[':peer'] = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
  ws.send(JSON.stringify(table));
  echo(ws);
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.exitOnStdinEof) {
    process.stdin.on('end', () => process.exit(0));
    process.stdin.on('error', () => process.exit(0));
    process.stdin.resume();
  }

  const options = {
    host: '127.0.0.1',
    port: args.port,
    maxPayload: MAX_SIZE,
    perMessageDeflate: args.deflate ? { threshold: 0 } : false,
  };
  if (args.mode === 'subprotocol') {
    options.handleProtocols = (protocols) =>
      protocols.has(args.subprotocol) ? args.subprotocol : false;
    options.verifyClient = (info, done) => {
      if (offeredProtocols(info.req).includes(args.subprotocol)) {
        done(true);
      } else {
        done(false, 400, `missing subprotocol ${args.subprotocol}`);
      }
    };
  }

  const server = new WebSocketServer(options);
  server.on('error', (err) => {
    process.stderr.write(`ws_server.js: server error: ${err.stack || err}\n`);
    process.exit(1);
  });
  server.on('listening', () => {
    process.stdout.write(`LISTENING ${server.address().port}\n`);
  });
  server.on('connection', (ws, req) => {
    ws.on('error', (err) => process.stderr.write(`ws_server.js: connection error: ${err}\n`));
    switch (args.mode) {
      case 'echo':
      case 'subprotocol':
        echo(ws);
        break;
      case 'silent':
        // Reading stops, so even the peer's FIN goes unnoticed: parked until killed.
        ws.pause();
        break;
      case 'close':
        close(ws, args.code, args.reason);
        break;
      case 'headers':
        headers(ws, req);
        break;
    }
  });
}

main();
