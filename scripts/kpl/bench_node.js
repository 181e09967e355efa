#!/usr/bin/env node
// De-aggregation throughput of the official Node.js library (aws-kinesis-agg) on the same input as
// the Rust benchmark (kcl-core/benches/deagg.rs); scripts/kpl/bench.sh runs all of them.
//
//   NODE_PATH=$(scripts/kpl/setup_node.sh DIR) node scripts/kpl/bench_node.js FILE [--tsv OUT]
//
// FILE holds the aggregated records as [u32 big-endian length][bytes]. Records are passed in the
// AWS SDK v3 shape (`Data` a Buffer, so no base64 decoding of the input), with checksum
// verification on, to deaggregateSync, the library's synchronous interface. The library returns
// each user record's data base64-encoded; that is part of its cost. Reports the best and the
// median of several rounds, and Node's MD5 alone over the same protobuf bytes for reference.
// --tsv appends tab-separated result lines for scripts/kpl/bench_table.py.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const deagg = require('aws-kinesis-agg');

function load(path) {
  const blob = fs.readFileSync(path);
  const records = [];
  let pos = 0;
  while (pos < blob.length) {
    const n = blob.readUInt32BE(pos);
    records.push(blob.subarray(pos + 4, pos + 4 + n));
    pos += 4 + n;
  }
  return records;
}

// Best and median seconds per call over `rounds` rounds (each at least ~50 ms of calls).
function measure(rounds, fn) {
  const times = [];
  let result;
  for (let r = 0; r < rounds; r++) {
    let iters = 0;
    const start = process.hrtime.bigint();
    let elapsed;
    do {
      result = fn();
      iters++;
      elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    } while (elapsed < 0.05);
    times.push(elapsed / iters);
  }
  times.sort((a, b) => a - b);
  return { best: times[0], median: times[Math.floor(times.length / 2)], result };
}

function main() {
  const args = process.argv.slice(2);
  const tsvAt = args.indexOf('--tsv');
  const tsv = tsvAt >= 0 ? args[tsvAt + 1] : null;
  const files = args.filter((a, i) => i !== tsvAt && i !== tsvAt + 1);
  if (files.length !== 1) {
    process.stderr.write('usage: bench_node.js FILE [--tsv OUT]\n');
    process.exit(2);
  }
  const aggregates = load(files[0]);
  const total = aggregates.reduce((n, a) => n + a.length, 0);
  const v3 = aggregates.map((a, i) => ({
    SequenceNumber: (49590338271490256608559692538361571095921575989130000000n + BigInt(i)).toString(),
    PartitionKey: 'pk',
    ApproximateArrivalTimestamp: 0,
    Data: a,
  }));

  const runDeagg = () => {
    let count = 0;
    for (const record of v3) {
      deagg.deaggregateSync(record, true, (err, userRecords) => {
        if (err) {
          throw err;
        }
        count += userRecords.length;
      });
    }
    return count;
  };
  const runMd5 = () => {
    for (const a of aggregates) {
      crypto.createHash('md5').update(a.subarray(4, a.length - 16)).digest();
    }
    return 0;
  };

  const md5 = measure(20, runMd5);
  const d = measure(10, runDeagg);
  const userRecords = d.result;
  const version = require('aws-kinesis-agg/package.json').version;
  const pad = (s, n) => String(s).padStart(n);
  console.log(`case (aws-kinesis-agg ${version}, Node ${process.version})`.padEnd(38) +
    pad('MB/s', 8) + pad('median', 9) + pad('records/s', 12));
  console.log(`-- ${aggregates.length} aggregates, ${(total / 1e6).toFixed(1)} MB, ${userRecords} user records`);
  const rows = [
    ['md5', 'Node crypto MD5 only', md5],
    ['deagg', 'deaggregateSync', d],
  ];
  const lines = [];
  for (const [key, name, t] of rows) {
    const mbs = total / t.best / 1e6;
    const median = total / t.median / 1e6;
    const rps = userRecords / t.best;
    console.log(name.padEnd(38) + pad(mbs.toFixed(1), 8) + pad(median.toFixed(1), 9) +
      pad(rps.toFixed(0), 12));
    lines.push(['node', 'distinct', key, `${name} (aws-kinesis-agg ${version}, Node ${process.version})`,
      mbs.toFixed(1), median.toFixed(1), rps.toFixed(0)].join('\t'));
  }
  if (tsv) {
    fs.appendFileSync(tsv, lines.join('\n') + '\n');
  }
}

main();
