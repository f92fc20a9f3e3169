//! A registry's native targets: the `xds:` targets grpc's own resolver and balancer dial,
//! served by the process's xDS server ([`crate::xds::host`]) from this registry's caches.
//!
//! Each distinct target configuration of a registry is one scope, so that two registries
//! (or one registry with two policies) never share a resource. A registry attaches to the
//! server on its first native target and detaches when it closes; its targets then answer
//! as services with no instance.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::cache::ServiceCache;
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::xds::{host, ScopeOwner, TargetConfig, XdsTarget, AUTHORITY};

/// A target to dial, and the server that answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeTarget {
    /// `xds://genesis-registry/<scope>/<service>`.
    pub target: String,
    /// The xDS server's loopback address, for grpc's bootstrap.
    pub server: SocketAddr,
}

/// The scopes of one registry.
#[derive(Default)]
pub struct NativeScopes {
    state: Mutex<Scopes>,
}

#[derive(Default)]
struct Scopes {
    /// (configuration, scope name), in the order they were first used.
    named: Vec<(TargetConfig, String)>,
    /// Whether the registry counts among the server's users.
    attached: bool,
}

impl NativeScopes {
    /// The target of `service` under `config` for registry `registry` (attaching it to the
    /// server), whose changes come from `cache`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a configuration grpc would refuse; [`Error::XdsServer`]
    /// when the server cannot start.
    pub async fn target(
        &self,
        registry: u64,
        owner: ScopeOwner,
        cache: Arc<ServiceCache>,
        config: TargetConfig,
    ) -> Result<NativeTarget> {
        check(&config)?;
        let attached = host::attach(registry).await?;
        let scope = {
            let mut state = lock(&self.state);
            state.attached = true;
            match state.named.iter().find(|(known, _)| *known == config) {
                Some((_, scope)) => scope.clone(),
                None => {
                    let scope = format!("r{registry}-{}", state.named.len());
                    state.named.push((config.clone(), scope.clone()));
                    scope
                }
            }
        };
        let target = XdsTarget::new(Some(AUTHORITY), &scope, cache.name())?;
        attached.source.set_scope(&scope, config, owner);
        attached.source.follow(&scope, cache);
        Ok(NativeTarget { target: target.target_uri(), server: attached.address })
    }

    /// Drops this registry's scopes and detaches it from the server (which stops if it was
    /// the last user). Idempotent.
    pub async fn close(&self, registry: u64) {
        if self.drop_scopes() {
            host::detach(registry).await;
        }
    }

    /// [`NativeScopes::close`] without waiting for the server to stop.
    pub fn close_now(&self, registry: u64) {
        if self.drop_scopes() {
            host::detach_now(registry);
        }
    }

    /// Whether the registry was attached.
    fn drop_scopes(&self) -> bool {
        let (scopes, attached) = {
            let mut state = lock(&self.state);
            let scopes: Vec<String> = state.named.drain(..).map(|(_, scope)| scope).collect();
            (scopes, std::mem::take(&mut state.attached))
        };
        if let Some(source) = host::running_source() {
            for scope in &scopes {
                source.drop_scope(scope);
            }
        }
        attached
    }
}

fn check(config: &TargetConfig) -> Result<()> {
    if let Some(outliers) = &config.outlier_detection {
        outliers.validate()?;
    }
    match config.zone.as_deref() {
        Some(zone) if zone.trim().is_empty() => {
            Err(Error::InvalidConfig(format!("zone must be a non-empty string (got {zone:?})")))
        }
        _ => Ok(()),
    }
}
