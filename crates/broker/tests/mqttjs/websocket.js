// MQTT over WebSocket with MQTT.js: connect to a `ws://` or `wss://` URL, subscribe at QoS 2,
// publish one message at each QoS 0, 1 and 2, and receive all three back with their QoS and
// payload (one of them larger than a WebSocket read buffer).
//
// usage: node websocket.js URL VERSION [CA_FILE]
// URL: ws://127.0.0.1:PORT/mqtt or wss://localhost:PORT/mqtt; VERSION: 4 (3.1.1) or 5;
// CA_FILE: the CA that signed the broker's certificate (wss: verified, rejectUnauthorized).
// Prints `ok` and exits 0 when every message came back, 1 with the reason if not.
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [url, version, caFile] = process.argv.slice(2);
const fail = (why) => { console.error(`FAIL: ${why}`); process.exit(1); };
setTimeout(() => fail('no result within 15 s'), 15000).unref();

const options = {
  protocolVersion: Number(version),
  clientId: `mqttjs-ws-${version}-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
};
if (caFile) {
  options.ca = fs.readFileSync(caFile);
  options.rejectUnauthorized = true;
}

const topic = `mqttjs/ws/${process.pid}`;
const big = 'x'.repeat(40000);
const expected = new Map([
  [0, 'qos zero'],
  [1, big],
  [2, 'qos two'],
]);

const client = mqtt.connect(url, options);
client.on('error', (e) => fail(`client error: ${e.message}`));
client.on('close', () => { if (expected.size > 0) fail('connection closed early'); });

client.on('connect', (connack) => {
  if (connack.returnCode !== undefined && connack.returnCode !== 0) fail(`CONNACK ${connack.returnCode}`);
  client.subscribe(`${topic}/#`, { qos: 2 }, (err, granted) => {
    if (err) fail(`subscribe: ${err.message}`);
    if (!granted || granted[0].qos !== 2) fail(`granted ${JSON.stringify(granted)}`);
    for (const [qos, payload] of expected) {
      client.publish(`${topic}/${qos}`, payload, { qos }, (e) => { if (e) fail(`publish QoS ${qos}: ${e.message}`); });
    }
  });
});

client.on('message', (t, payload, packet) => {
  const qos = Number(t.split('/').pop());
  if (!expected.has(qos)) fail(`unexpected message on ${t}`);
  if (packet.qos !== qos) fail(`message on ${t} came with QoS ${packet.qos}`);
  if (payload.toString() !== expected.get(qos)) fail(`wrong payload on ${t} (${payload.length} bytes)`);
  expected.delete(qos);
  if (expected.size === 0) {
    client.end(false, () => { console.log('ok'); process.exit(0); });
  }
});
