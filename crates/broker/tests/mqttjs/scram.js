// MQTT 5.0 enhanced authentication with SCRAM-SHA-256 through MQTT.js's AUTH support
// (`authenticationMethod` in CONNECT, `handleAuth` for the broker's AUTH packets).
//
// usage: node scram.js PORT USER PASSWORD ok|refused
// `ok`: the login succeeds, the broker's final signature verifies (it knows the password),
// and a message published under USER/ comes back. `refused`: the CONNACK refuses with
// 0x86 (Bad User Name or Password). Exits 0 when that happened, 1 with the reason if not.
// The SCRAM computations are RFC 5802's, done here with Node's crypto module.
'use strict';
const crypto = require('crypto');
const mqtt = require('mqtt');

const [port, user, password, expect] = process.argv.slice(2);
const fail = (why) => { console.error(`FAIL: ${why}`); process.exit(1); };
setTimeout(() => fail('no result within 15 s'), 15000).unref();

const hmac = (key, text) => crypto.createHmac('sha256', key).update(text).digest();
const clientNonce = crypto.randomBytes(18).toString('base64');
const clientFirstBare = `n=${user},r=${clientNonce}`;
let serverSignature = null;

const client = mqtt.connect({
  host: '127.0.0.1',
  port: Number(port),
  protocolVersion: 5,
  clientId: `mqttjs-scram-${process.pid}`,
  reconnectPeriod: 0,
  properties: {
    authenticationMethod: 'SCRAM-SHA-256',
    authenticationData: Buffer.from(`n,,${clientFirstBare}`),
  },
});

client.handleAuth = (packet, callback) => {
  const serverFirst = packet.properties.authenticationData.toString();
  const attrs = Object.fromEntries(serverFirst.split(',').map((a) => [a[0], a.slice(2)]));
  if (!attrs.r.startsWith(clientNonce)) return callback(new Error('server nonce does not extend ours'));
  const salted = crypto.pbkdf2Sync(password, Buffer.from(attrs.s, 'base64'), Number(attrs.i), 32, 'sha256');
  const clientKey = hmac(salted, 'Client Key');
  const storedKey = crypto.createHash('sha256').update(clientKey).digest();
  const withoutProof = `c=biws,r=${attrs.r}`;
  const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
  const signature = hmac(storedKey, authMessage);
  const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]));
  serverSignature = hmac(hmac(salted, 'Server Key'), authMessage).toString('base64');
  callback(null, {
    cmd: 'auth',
    reasonCode: 0x18,
    properties: {
      authenticationMethod: 'SCRAM-SHA-256',
      authenticationData: Buffer.from(`${withoutProof},p=${proof.toString('base64')}`),
    },
  });
};

client.on('connect', (connack) => {
  if (expect !== 'ok') fail(`connected, expected a refusal: ${JSON.stringify(connack)}`);
  const props = connack.properties || {};
  if (props.authenticationMethod !== 'SCRAM-SHA-256') fail('CONNACK lacks the authentication method');
  const final = (props.authenticationData || Buffer.alloc(0)).toString();
  if (final !== `v=${serverSignature}`) fail(`server signature does not verify: ${final}`);
  const topic = `${user}/mqttjs`;
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) fail(`subscribe: ${err.message}`);
    client.publish(topic, 'hello over SCRAM', { qos: 1 });
  });
});

client.on('message', (topic, payload) => {
  if (payload.toString() !== 'hello over SCRAM') fail(`unexpected message ${payload}`);
  client.end(false, {}, () => { console.log('ok'); process.exit(0); });
});

client.on('error', (err) => {
  if (expect === 'refused' && err.code === 134) { console.log('refused'); process.exit(0); }
  fail(`error: ${err.message} (code ${err.code})`);
});
