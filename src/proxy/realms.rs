//! `RealmBook`: each route's upstream token realm, learned from its first challenge and kept.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::routes::RouteTable;

use super::token::UpstreamRealm;

/// The realm each route's upstream named, by route name.
#[derive(Debug, Default)]
pub struct RealmBook {
    realms: HashMap<String, RwLock<Option<Arc<UpstreamRealm>>>>,
}

impl RealmBook {
    pub fn new(routes: &RouteTable) -> RealmBook {
        RealmBook {
            realms: routes
                .routes()
                .iter()
                .map(|r| (r.name.clone(), RwLock::new(None)))
                .collect(),
        }
    }

    pub fn get(&self, route: &str) -> Option<Arc<UpstreamRealm>> {
        let slot = self.realms.get(route)?;
        slot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers a route's realm; true when it was new or changed.
    pub fn learn(&self, route: &str, realm: UpstreamRealm) -> bool {
        let Some(slot) = self.realms.get(route) else {
            return false;
        };
        if slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .is_some_and(|known| *known == realm)
        {
            return false;
        }
        *slot.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(realm));
        true
    }
}
