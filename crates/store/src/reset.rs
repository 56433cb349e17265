//! A platform's deliberate reset of the synced versions (a signed
//! `SiteReset`, verified by `sync`): the identity table or the health
//! records may then take whatever version the platform sends next. What the
//! tables hold stays until then, so the gate keeps deciding meanwhile.

use crate::{Result, Store, StoreError};

impl Store {
    /// Sets the identity version (`identity`) and/or the health version
    /// (`health`) back to 0 in one transaction; a snapshot being staged is
    /// dropped with the identity version.
    pub fn reset_synced_versions(&mut self, identity: bool, health: bool) -> Result<()> {
        if identity {
            self.discard_snapshot()?;
        }
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(&wrap)?;
        if identity {
            tx.execute("UPDATE ident.identity_state SET version = 0 WHERE id = 1", []).map_err(&wrap)?;
        }
        if health {
            tx.execute("UPDATE ident.health_state SET version = 0 WHERE id = 1", []).map_err(&wrap)?;
        }
        tx.commit().map_err(wrap)
    }
}
