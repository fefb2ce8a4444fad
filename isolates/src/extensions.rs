//! The one ordered list of extensions every isolate has. The snapshot build
//! (`build.rs`) and the live runtime both call [`extensions`], so the two can
//! never drift apart.

use std::sync::Arc;

use deno_core::Extension;

/// Deno's Web API extensions, then churn's own, in dependency order.
pub fn extensions() -> Vec<Extension> {
    vec![
        deno_webidl::deno_webidl::init(),
        deno_web::deno_web::init(
            Arc::new(deno_web::BlobStore::default()) as Arc<dyn deno_web::BlobStoreTrait>,
            None,
            false,
            deno_web::InMemoryBroadcastChannel::default(),
        ),
        deno_crypto::deno_crypto::init(None),
        crate::ext::shims::deno_net::init(),
        crate::ext::shims::deno_telemetry::init(),
        deno_fetch::deno_fetch::init(deno_fetch::Options {
            user_agent: "churn".to_string(),
            ..Default::default()
        }),
        crate::ext::do_ops::churn_do::init(),
        crate::ext::ws_ops::churn_ws::init(),
        crate::ext::fn_ops::churn_fn::init(),
    ]
}
