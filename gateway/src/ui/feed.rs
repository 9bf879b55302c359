//! The seam through which the node tells the dashboard what the gateway does not know: its
//! hardware (lines, grants, sensors) and its triggers' deliveries. The gateway never reaches
//! into the agent; the daemon plugs a [`NodeFeed`] in with [`crate::Gateway::set_node_feed`].
//! Without one, the hardware page says the node has no hardware helper.

use std::future::Future;
use std::pin::Pin;

use futures::Stream;

use super::model::{FunctionHardware, HardwareView, NodeEvent, SensorView};

/// A boxed future of a [`NodeFeed`] method.
pub type FeedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stream of [`NodeEvent`]s for one open page.
pub type NodeEvents = Pin<Box<dyn Stream<Item = NodeEvent> + Send>>;

/// What the node shows on the dashboard beyond the [`crate::provider::Provider`]. Called only
/// while a page is open; nothing here may run when none is.
pub trait NodeFeed: Send + Sync + 'static {
    /// The hardware page's snapshot: GPIO lines with their levels and owners, bus grants,
    /// recent trigger deliveries. Cheap: called every second while the page is open.
    fn hardware(&self) -> FeedFuture<'_, HardwareView>;

    /// The node's sensors with a fresh reading each (slow on real 1-Wire buses: up to
    /// 750 ms per sensor; implementations read off the async threads). Called every few
    /// seconds while the hardware page is open.
    fn sensors(&self) -> FeedFuture<'_, Vec<SensorView>>;

    /// A function's grants and triggers, with each trigger's last delivery.
    fn function_hardware<'a>(
        &'a self,
        name: &'a str,
        namespace: &'a str,
    ) -> FeedFuture<'a, FunctionHardware>;

    /// Edges, line changes and deliveries from now on, until the stream is dropped (one per
    /// open page; a page that falls behind misses events, never blocks the node).
    fn events(&self) -> NodeEvents;
}
