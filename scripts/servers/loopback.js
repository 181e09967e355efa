// Preloaded with `node -r` to keep a server that binds 0.0.0.0 (kinesis-local has no host flag) on
// the loopback interface: every net.Server.listen on a TCP port is forced to host 127.0.0.1.
'use strict';
const net = require('net');
const original = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    if (first.path === undefined) {
      args[0] = Object.assign({}, first, { host: '127.0.0.1' });
    }
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    // listen(port[, host][, backlog][, callback]): drop a given host, insert ours.
    const rest = args.slice(1);
    if (typeof rest[0] === 'string' || rest[0] === null || rest[0] === undefined) {
      if (typeof rest[0] !== 'function') rest.shift();
    }
    args = [first, '127.0.0.1', ...rest];
  }
  return original.apply(this, args);
};
