//! The XDP classifier and AF_XDP sockets: attaching, and applying the policy of a configuration.
use super::*;

/// Pushes the configuration's drop policy (rate limits, known-only) and MAC lists (denied
/// machines, and in known-only mode the known ones) into the running classifier, changing only
/// what differs. Machines from the control API are part of `config` once merged.
pub(super) fn apply_xdp_policy(
    classifier: Option<&mut XdpClassifier>,
    config: &ApplianceConfig,
    why: &str,
) {
    let filter = &config.xdp_filter;
    let Some(classifier) = classifier else {
        if filter.policy == MacPolicy::KnownOnly {
            tracing::warn!(
                trigger = why,
                "xdp.policy = known-only is enforced by the XDP classifier, which is not \
                 attached: unknown machines are served"
            );
        }
        return;
    };
    let lists = config.xdp_mac_lists();
    if lists.uuid_only > 0 {
        tracing::warn!(
            machines = lists.uuid_only,
            "known-only: machines known by UUID alone have no MAC for the allow list and are \
             refused at the NIC; give them a mac"
        );
    }
    let applied = classifier
        .set_policy(filter.policy())
        .and_then(|()| classifier.sync_mac_lists(&lists.deny, &lists.allow));
    match applied {
        Ok(changes) => tracing::info!(
            trigger = why,
            policy = match filter.policy {
                MacPolicy::Open => "open",
                MacPolicy::KnownOnly => "known-only",
            },
            dhcp_rate = filter.dhcp_rate_per_sec,
            dhcp_burst = filter.dhcp_burst,
            denied = lists.deny.len(),
            allowed = lists.allow.len(),
            added = changes.denied + changes.allowed,
            removed = changes.undenied + changes.unallowed,
            "XDP policy applied"
        ),
        Err(err) => tracing::error!(
            trigger = why,
            error = %error_chain(&err),
            "the XDP policy was not applied in full; the next reload tries again"
        ),
    }
}

/// Attaches the classifier; the appliance serves without it when it cannot (the kernel lacks
/// BPF, or the process lacks the capability), saying why.
pub(super) fn attach_classifier(
    iface: &str,
    mode: AttachMode,
    config: &ApplianceConfig,
) -> Option<XdpClassifier> {
    let attempt = || -> anyhow::Result<XdpClassifier> {
        let mut classifier = XdpClassifier::load(
            XdpConfig::new(config.server.http_port).with_policy(config.xdp_filter.policy()),
        )?;
        let attachment = classifier.attach(iface, mode)?;
        if let Some(reason) = &attachment.fallback_reason {
            tracing::warn!(%iface, native_error = %reason, "XDP attached in generic mode");
        } else {
            tracing::info!(%iface, mode = %attachment.mode, "XDP classifier attached");
        }
        Ok(classifier)
    };
    match attempt() {
        Ok(classifier) => Some(classifier),
        Err(err) => {
            tracing::warn!(
                %iface,
                error = %error_chain(err.as_ref()),
                "XDP classifier not attached; serving from sockets alone"
            );
            None
        }
    }
}

/// Binds the AF_XDP path when `choice` asks for it. `Auto` falls back to the io_uring workers
/// (`None`) and logs why; `On` refuses to start instead.
pub(super) fn afxdp_sockets(
    choice: AfXdpChoice,
    iface: &str,
    classifier: Option<&mut XdpClassifier>,
) -> anyhow::Result<Option<engine::AfXdpSockets>> {
    if choice == AfXdpChoice::Off {
        return Ok(None);
    }
    let attempt = match classifier {
        None => Err(anyhow::anyhow!("the XDP classifier is not attached")),
        Some(classifier) => {
            // Generic (skb) XDP hands frames to AF_XDP by copy only; native mode tries
            // zero-copy first.
            let bind = match classifier.attachment().map(|a| a.mode) {
                Some(AttachMode::Native) => XskBind::Auto,
                _ => XskBind::Copy,
            };
            let xsk = XskConfig {
                bind,
                ..XskConfig::default()
            };
            engine::AfXdpSockets::bind(iface, Ports::default(), classifier, xsk)
                .map_err(anyhow::Error::from)
        }
    };
    match attempt {
        Ok(sockets) => {
            say!(
                "afxdp iface={iface} queues={} zero_copy={}",
                sockets.queues(),
                sockets.zero_copy()
            );
            Ok(Some(sockets))
        }
        Err(err) if choice == AfXdpChoice::Auto => {
            tracing::warn!(
                %iface,
                error = %error_chain(err.as_ref()),
                "AF_XDP path not used; serving DHCP and TFTP from io_uring sockets"
            );
            Ok(None)
        }
        Err(err) => Err(err.context("xdp.afxdp = on, and the AF_XDP path cannot start")),
    }
}
