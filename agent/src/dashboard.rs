//! What this node shows on the gateway's dashboard beyond the provider: its hardware (lines,
//! grants, sensors) and its triggers' deliveries — the gateway's [`NodeFeed`], plugged in by
//! the daemon. Everything here runs only while a dashboard page asks for it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bramble_gateway::ui::model::{
    BusGrant, EdgeView, FunctionHardware, HardwareView, LineView, NodeEvent, SensorView,
    TriggerView,
};
use bramble_gateway::ui::{FeedFuture, NodeEvents, NodeFeed};
use bramble_hardware::{Edge, Grants, Hardware};
use futures::StreamExt as _;
use tokio::sync::broadcast;

use crate::store::Store;
use crate::triggers::{self, Deliveries};

/// The node's [`NodeFeed`].
#[derive(Debug)]
pub struct NodeView {
    pub hardware: Arc<Hardware>,
    pub deliveries: Arc<Deliveries>,
    pub store: Arc<Store>,
}

impl NodeFeed for NodeView {
    fn hardware(&self) -> FeedFuture<'_, HardwareView> {
        Box::pin(async move {
            let hardware = &self.hardware;
            HardwareView {
                backend: hardware.backend().to_owned(),
                simulated: hardware.is_simulator(),
                lines: hardware
                    .lines()
                    .into_iter()
                    .map(|line| LineView {
                        name: line.name,
                        direction: line.direction.map(|d| d.to_string()),
                        level: line.level,
                        bias: line.bias.map(|b| b.to_string()),
                        debounce: line.debounce,
                        owners: line.owners,
                    })
                    .collect(),
                buses: buses(&hardware.granted()),
                deliveries: self.deliveries.recent(),
            }
        })
    }

    fn sensors(&self) -> FeedFuture<'_, Vec<SensorView>> {
        let hardware = Arc::clone(&self.hardware);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_sensors(&hardware))
                .await
                .unwrap_or_default()
        })
    }

    fn function_hardware<'a>(
        &'a self,
        name: &'a str,
        namespace: &'a str,
    ) -> FeedFuture<'a, FunctionHardware> {
        Box::pin(async move {
            let state = self.store.snapshot();
            let Some(record) = state.function(name, namespace) else {
                return FunctionHardware::default();
            };
            let annotations = &record.deployment.annotations;
            let key = format!("{name}.{namespace}");
            let grants = triggers::hardware_grants(annotations)
                .ok()
                .flatten()
                .map(|g| grant_lists(&g))
                .unwrap_or_default();
            let triggers = triggers::parse(annotations)
                .unwrap_or_default()
                .into_iter()
                .map(|t| TriggerView {
                    last: self.deliveries.last(&key, &t.id()),
                    id: t.id(),
                    kind: t.kind().to_owned(),
                    source: t.describe(),
                    path: t.path.clone(),
                })
                .collect();
            FunctionHardware { grants, triggers }
        })
    }

    fn events(&self) -> NodeEvents {
        let edges = broadcast_stream(self.hardware.subscribe_edges()).map(|e| {
            NodeEvent::Edge(EdgeView {
                edge: match e.edge {
                    Edge::Rising => "rising",
                    Edge::Falling => "falling",
                }
                .to_owned(),
                line: e.line,
                level: e.level,
                seqno: e.seqno,
                count: 1,
            })
        });
        let lines = futures::stream::unfold(self.hardware.line_changes(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some((NodeEvent::LinesChanged, rx))
        });
        let deliveries = broadcast_stream(self.deliveries.subscribe()).map(NodeEvent::Delivery);
        Box::pin(futures::stream::select_all([
            edges.boxed(),
            lines.boxed(),
            deliveries.boxed(),
        ]))
    }
}

/// A broadcast receiver as a stream; a receiver that fell behind skips what it missed.
fn broadcast_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(item) => return Some((item, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// The I2C, SPI and PWM grants of every function, by device, with their owners.
fn buses(granted: &BTreeMap<String, Grants>) -> Vec<BusGrant> {
    let mut devices: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
    for (function, grants) in granted {
        for (bus, addresses) in &grants.i2c {
            for address in addresses {
                devices
                    .entry(("i2c", format!("{bus}:{address:#04x}")))
                    .or_default()
                    .push(function.clone());
            }
        }
        for (bus, cs) in &grants.spi {
            devices
                .entry(("spi", format!("{bus}.{cs}")))
                .or_default()
                .push(function.clone());
        }
        for channel in &grants.pwm {
            devices
                .entry(("pwm", channel.to_string()))
                .or_default()
                .push(function.clone());
        }
    }
    devices
        .into_iter()
        .map(|((kind, device), owners)| BusGrant {
            kind: kind.to_owned(),
            device,
            owners,
        })
        .collect()
}

/// A function's grants as written, by kind (`gpio`, `i2c`, `spi`, `pwm`, `sensors`).
fn grant_lists(grants: &Grants) -> BTreeMap<String, Vec<String>> {
    let mut lists = BTreeMap::new();
    let mut put = |kind: &str, items: Vec<String>| {
        if !items.is_empty() {
            lists.insert(kind.to_owned(), items);
        }
    };
    put(
        "gpio",
        grants
            .gpio
            .iter()
            .map(|(line, g)| format!("{line}:{}", g.spec()))
            .collect(),
    );
    put(
        "i2c",
        grants
            .i2c
            .iter()
            .flat_map(|(bus, addrs)| addrs.iter().map(move |a| format!("{bus}:{a:#04x}")))
            .collect(),
    );
    put(
        "spi",
        grants
            .spi
            .iter()
            .map(|(bus, cs)| format!("{bus}.{cs}"))
            .collect(),
    );
    put("pwm", grants.pwm.iter().map(u8::to_string).collect());
    put("sensors", grants.sensors.iter().cloned().collect());
    lists
}

/// Every sensor present or granted, read now. Blocking.
fn read_sensors(hardware: &Hardware) -> Vec<SensorView> {
    let mut owners: BTreeMap<String, Vec<String>> = hardware
        .present_sensors()
        .into_iter()
        .map(|id| (id, Vec::new()))
        .collect();
    for (function, grants) in hardware.granted() {
        for id in grants.sensors {
            owners.entry(id).or_default().push(function.clone());
        }
    }
    owners
        .into_iter()
        .map(|(id, owners)| match hardware.read_sensor(&id) {
            Ok(reading) => SensorView {
                id,
                value: Some(reading.value),
                unit: Some(reading.unit.to_owned()),
                error: None,
                owners,
            },
            Err(e) => SensorView {
                id,
                value: None,
                unit: None,
                error: Some(bramble_base::error_chain(&e)),
                owners,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_grants_are_listed_per_device_with_their_owners() {
        let mut a = Grants::default();
        a.i2c.insert(1, [0x76, 0x77].into());
        a.pwm.insert(0);
        let mut b = Grants::default();
        b.i2c.insert(1, [0x76].into());
        b.spi.insert((0, 1));
        let granted = BTreeMap::from([("a.ns".to_owned(), a.clone()), ("b.ns".to_owned(), b)]);
        let listed: Vec<(String, String, Vec<String>)> = buses(&granted)
            .into_iter()
            .map(|g| (g.kind, g.device, g.owners))
            .collect();
        let owners = |o: &[&str]| o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            listed,
            [
                ("i2c".into(), "1:0x76".into(), owners(&["a.ns", "b.ns"])),
                ("i2c".into(), "1:0x77".into(), owners(&["a.ns"])),
                ("pwm".into(), "0".into(), owners(&["a.ns"])),
                ("spi".into(), "0.1".into(), owners(&["b.ns"])),
            ]
        );
        let lists = grant_lists(&a);
        assert_eq!(lists["i2c"], ["1:0x76", "1:0x77"]);
        assert_eq!(lists["pwm"], ["0"]);
        assert!(!lists.contains_key("gpio"));
    }
}
