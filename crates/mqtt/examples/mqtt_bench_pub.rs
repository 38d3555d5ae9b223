//! The publisher of `scripts/bench iot`: N QoS 1 messages as fast as the broker acknowledges
//! them, each stamped with its send time so subscribers can measure latency.
//!
//! usage: mqtt_bench_pub HOST:PORT TOPIC N
//! payload: {"id": i, "sent_ns": <unix ns at send>, "site": "s<i%10>", "temp": <float>}

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, topic, n] = &args[..] else {
        eprintln!("usage: mqtt_bench_pub HOST:PORT TOPIC N");
        std::process::exit(2);
    };
    let n: u64 = n.parse().expect("N is a number");
    let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
    let mut o = MqttOptions::new(
        format!("bench-pub-{}", std::process::id()),
        host,
        port.parse().unwrap(),
    );
    o.set_keep_alive(Duration::from_secs(30))
        .set_outgoing_inflight_upper_limit(1000);
    let (client, mut el) = AsyncClient::new(o, 2000);
    let topic = topic.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            let sent = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let payload = format!(
                r#"{{"id": {i}, "sent_ns": {sent}, "site": "s{}", "temp": {}.5}}"#,
                i % 10,
                i % 40
            );
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });
    let started = Instant::now();
    let mut acked = 0u64;
    while acked < n {
        match el.poll().await {
            Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher: {e}"),
        }
    }
    let client = publisher.await.unwrap();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;
    eprintln!(
        "published {n} messages in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
