// One role of a cell of the interoperability matrix (crates/broker/tests/interop_matrix.rs),
// played by MQTT.js over TCP.
//
// usage: node matrix.js PORT VERSION ROLE ARGS...   (VERSION: v311 or v5)
//   sub TOPIC QOS                  subscribe; print `ready|GRANTED_QOS` once the SUBACK is in,
//                                  then `topic|qos|retain|payload` per message, until killed
//   pub TOPIC QOS RETAIN PAYLOAD   publish (RETAIN 0 or 1), wait until the QoS flow is
//                                  complete, end with DISCONNECT; print `ok`
//   will TOPIC QOS PAYLOAD         connect with that will (not retained), print `ready` once
//                                  the CONNACK is in, then idle until killed (SIGKILL)
//
// The checks are made by the Rust side, the same for every client kind; this script fails
// (exit 1, reason on stderr) only when the broker refuses something or the watchdog fires.
'use strict';
const mqtt = require('mqtt');

const [port, version, role, ...rest] = process.argv.slice(2);
const fail = (why) => { console.error(`FAIL [${version} ${role}]: ${why}`); process.exit(1); };
setTimeout(() => fail('not done (or not killed) within 20 s'), 20000).unref();

const arity = { sub: 2, pub: 4, will: 3 };
if (!['v311', 'v5'].includes(version) || !(role in arity) || rest.length !== arity[role]) {
  console.error('usage: node matrix.js PORT v311|v5 sub TOPIC QOS | pub TOPIC QOS RETAIN PAYLOAD | will TOPIC QOS PAYLOAD');
  process.exit(2);
}

const options = {
  host: '127.0.0.1',
  port: Number(port),
  protocolVersion: version === 'v5' ? 5 : 4,
  clientId: `mqttjs-matrix-${role}-${version}-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
};
if (role === 'will') {
  const [topic, qos, payload] = rest;
  options.will = { topic, payload: Buffer.from(payload), qos: Number(qos), retain: false };
}

const client = mqtt.connect(options);
client.on('error', (e) => fail(`client error: ${e.message}`));
client.on('close', () => { if (role !== 'pub') fail('connection closed'); });

client.once('connect', () => {
  if (role === 'sub') {
    const [topic, qos] = rest;
    // MQTT.js may hand over a retained message that followed the SUBACK before it calls the
    // subscribe callback: lines wait until `ready` is printed.
    let early = [];
    const print = (line) => { if (early) early.push(line); else console.log(line); };
    client.on('message', (t, payload, packet) => {
      print(`${t}|${packet.qos}|${packet.retain ? 1 : 0}|${payload.toString()}`);
    });
    client.subscribe(topic, { qos: Number(qos) }, (err, granted) => {
      if (err) fail(`subscribe: ${err.message}`);
      if (!granted || granted.length !== 1 || granted[0].qos > 2) fail(`SUBACK ${JSON.stringify(granted)}`);
      console.log(`ready|${granted[0].qos}`);
      for (const line of early) console.log(line);
      early = null;
    });
  } else if (role === 'pub') {
    const [topic, qos, retain, payload] = rest;
    if (!['0', '1'].includes(retain)) fail(`RETAIN must be 0 or 1, not ${retain}`);
    client.publish(topic, payload, { qos: Number(qos), retain: retain === '1' }, (err) => {
      if (err) fail(`publish: ${err.message}`);
      client.end(false, {}, () => { console.log('ok'); process.exit(0); });
    });
  } else {
    console.log('ready');
  }
});
