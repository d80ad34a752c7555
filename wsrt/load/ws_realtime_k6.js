// k6 load test for wsrt: many authenticated WebSocket clients subscribed to
// channels, counting what they receive and how late it arrives.
//
//   WS_URL=ws://localhost:8080/ws WS_TOKEN=$(wsrt token dev-secret load-test) \
//     k6 run tests/load/ws_realtime_k6.js
//
// Environment: WS_URL, WS_TOKEN (Bearer JWT), WS_CHANNELS (comma-separated,
// default order_book), VUS (default 10), DURATION (default 30s),
// WS_SESSION_SECONDS (how long each connection stays open, default 10).
// `wsrt loadtest` sets these and prints a summary table.
import ws from "k6/ws";
import { check } from "k6";
import { Counter, Rate, Trend } from "k6/metrics";

const url = __ENV.WS_URL || "ws://localhost:8080/ws";
const token = __ENV.WS_TOKEN || "";
const channels = (__ENV.WS_CHANNELS || __ENV.WS_CHANNEL || "order_book").split(",");
const sessionSeconds = Number(__ENV.WS_SESSION_SECONDS || 10);

export const options = {
  vus: Number(__ENV.VUS || 10),
  duration: __ENV.DURATION || "30s",
  thresholds: {
    // Connection failures: handshakes not answered with 101, and sockets
    // closed by the server with anything but a normal close.
    ws_connection_failures: ["rate<0.01"],
    ws_messages_received: ["count>0"],
  },
};

const connectionFailures = new Rate("ws_connection_failures");
const messagesReceived = new Counter("ws_messages_received");
const errorFrames = new Counter("ws_error_frames");
const abnormalCloses = new Counter("ws_abnormal_closes");
// From the Kafka record timestamp to receipt by this client.
const messageDelay = new Trend("ws_message_delay_ms", true);

export default function () {
  const target = `${url}?channels=${encodeURIComponent(channels.join(","))}`;
  const params = { headers: token ? { Authorization: `Bearer ${token}` } : {} };
  let closing = false;
  const res = ws.connect(target, params, (socket) => {
    socket.on("message", (data) => {
      const msg = JSON.parse(data);
      if (msg.type === "message") {
        messagesReceived.add(1);
        messageDelay.add(Date.now() - msg.timestamp);
      } else if (msg.type === "error") {
        errorFrames.add(1);
      }
    });
    socket.on("close", (code) => {
      // The server closed it (slow consumer, token expired, shutdown …).
      if (!closing && code !== 1000) {
        abnormalCloses.add(1);
      }
    });
    socket.setTimeout(() => {
      closing = true;
      socket.close();
    }, sessionSeconds * 1000);
  });
  const upgraded = check(res, { "upgraded (101)": (r) => r && r.status === 101 });
  connectionFailures.add(!upgraded);
}
