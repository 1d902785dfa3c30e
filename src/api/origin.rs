//! Where a generation request comes from: when it arrived (its deadline counts from there) and
//! whose it is: the key it was made with. The engine shares its seats fairly between keys, and the
//! tokens of a key from the key store count against its quotas.
use super::auth::CallerKey;
use super::body::RequestArrival;
use super::key_limits::KeyIdentity;
use crate::engine::fair_share::Tenant;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Origin {
    pub arrived: Instant,
    pub tenant: Option<Tenant>,
    /// The name of the key-store key the request was made with.
    pub store_key: Option<String>,
}

impl Origin {
    /// A request that arrived now, of nobody in particular.
    pub fn now() -> Self {
        Self {
            arrived: Instant::now(),
            tenant: None,
            store_key: None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let arrived = parts
            .extensions
            .get::<RequestArrival>()
            .map_or_else(Instant::now, |a| a.0);
        let store_key = parts
            .extensions
            .get::<KeyIdentity>()
            .map(|k| k.0.name.clone());
        let tenant = match &store_key {
            Some(name) => Some(Tenant::new(name)),
            None => parts
                .extensions
                .get::<CallerKey>()
                .map(|k| Tenant::new(&super::audit_trail::key_name(&k.0))),
        };
        Ok(Self {
            arrived,
            tenant,
            store_key,
        })
    }
}
