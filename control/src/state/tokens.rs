//! API tokens: who a bearer token is, the first admin token, issuing and revoking.
use redb::{ReadableDatabase as _, ReadableTable};

use super::{ADMIN_TOKEN_ENV, ControlError, ControlState, check_strength, not_found};
use crate::api_types::TokenInfo;
use crate::audit;
use crate::auth::{self, Caller, Role, TokenRecord};
use crate::model::validate_name;
use crate::store::{self, DbContext, TOKENS, decode, encode, read_all, write_entry};

impl ControlState {
    /// The caller a bearer token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Result<Option<Caller>, ControlError> {
        let hash = auth::hash_token(token);
        let txn = self.inner.db.begin_read().db("beginning a read")?;
        let table = txn.open_table(TOKENS).db("opening tokens")?;
        let row = table.get(hash.as_str()).db("reading a token")?;
        let Some(v) = row else { return Ok(None) };
        let record: TokenRecord = decode("tokens", "(hash)", v.value())?;
        if !record.is_active(store::now_ms()) {
            return Ok(None);
        }
        Ok(Some(Caller {
            name: record.name,
            role: record.role,
        }))
    }

    /// Makes sure an admin can log in. With `token` (from `STAMPEDE_ADMIN_TOKEN`) that token is
    /// the admin `bootstrap`, replacing an earlier bootstrap token (the variable changed);
    /// a bootstrap token revoked through the API stays revoked when the same value comes again
    /// (a new value is the operator's way to bring one back). Without one, when no admin token
    /// exists yet, a new one is generated and returned so the caller can print it once (it is
    /// not stored anywhere).
    pub fn ensure_admin_token(&self, token: Option<&str>) -> Result<Option<String>, ControlError> {
        let system = Caller {
            name: "system".into(),
            role: Role::Admin,
        };
        if let Some(token) = token {
            self.set_bootstrap_token(&system, token)?;
            return Ok(None);
        }
        if self.tokens()?.iter().any(|t| t.role == Role::Admin) {
            return Ok(None);
        }
        let token = auth::generate_token()?;
        self.store_token(&system, "bootstrap", Role::Admin, &token, None)?;
        Ok(Some(token))
    }

    /// [`Self::ensure_admin_token`] with the token from the `STAMPEDE_ADMIN_TOKEN` environment
    /// variable, if set. The binary prints a returned token once, at start-up.
    pub fn ensure_admin_token_from_env(&self) -> Result<Option<String>, ControlError> {
        let token = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty());
        self.ensure_admin_token(token.as_deref())
    }

    fn set_bootstrap_token(&self, actor: &Caller, token: &str) -> Result<(), ControlError> {
        check_strength(ADMIN_TOKEN_ENV, token)?;
        let hash = auth::hash_token(token);
        let revoked = self.mutate(|txn, _| {
            let mut table = txn.open_table(TOKENS).db("opening tokens")?;
            if let Some(v) = table.get(hash.as_str()).db("reading a token")? {
                let record: TokenRecord = decode("tokens", "(hash)", v.value())?;
                return Ok(record.revoked);
            }
            let mut replaced = Vec::new();
            for row in table.iter().db("iterating tokens")? {
                let (k, v) = row.db("reading a token")?;
                let record: TokenRecord = decode("tokens", "(hash)", v.value())?;
                if record.name == "bootstrap" && !record.revoked {
                    replaced.push(k.value().to_owned());
                }
            }
            for old in &replaced {
                table.remove(old.as_str()).db("removing a token")?;
            }
            let record = TokenRecord {
                name: "bootstrap".into(),
                role: Role::Admin,
                created_at_ms: store::now_ms(),
                expires_at_ms: None,
                revoked: false,
            };
            table
                .insert(hash.as_str(), encode(&record).as_slice())
                .db("writing a token")?;
            drop(table);
            let detail = serde_json::json!({
                "name": "bootstrap", "role": Role::Admin, "replaced": replaced.len()
            });
            audit::append(txn, &actor.name, "token.bootstrap", "bootstrap", detail)?;
            Ok(false)
        })?;
        if revoked {
            tracing::warn!(
                "{ADMIN_TOKEN_ENV} holds a bootstrap token that was revoked; it stays revoked \
                 (set a new value to have a bootstrap token again)"
            );
        }
        Ok(())
    }

    /// Creates a token and returns it; only its hash is kept.
    pub fn create_token(
        &self,
        actor: &Caller,
        name: &str,
        role: Role,
    ) -> Result<String, ControlError> {
        self.create_token_expiring(actor, name, role, None)
    }

    /// [`Self::create_token`] that stops authenticating `expires_in` from now, if given.
    pub fn create_token_expiring(
        &self,
        actor: &Caller,
        name: &str,
        role: Role,
        expires_in: Option<std::time::Duration>,
    ) -> Result<String, ControlError> {
        validate_name(name)?;
        if self.tokens()?.iter().any(|t| t.name == name) {
            return Err(ControlError::Exists {
                kind: "token",
                key: name.to_owned(),
            });
        }
        let token = auth::generate_token()?;
        let expires_at_ms = expires_in.map(|d| {
            store::now_ms().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        self.store_token(actor, name, role, &token, expires_at_ms)?;
        Ok(token)
    }

    fn store_token(
        &self,
        actor: &Caller,
        name: &str,
        role: Role,
        token: &str,
        expires_at_ms: Option<u64>,
    ) -> Result<(), ControlError> {
        check_strength("the token", token)?;
        let record = TokenRecord {
            name: name.to_owned(),
            role,
            created_at_ms: store::now_ms(),
            expires_at_ms,
            revoked: false,
        };
        self.mutate(|txn, _| {
            let key = auth::hash_token(token);
            write_entry(
                txn,
                TOKENS,
                ("opening tokens", "writing a token"),
                &key,
                &record,
            )?;
            let detail = serde_json::json!({ "name": name, "role": role });
            audit::append(txn, &actor.name, "token.create", name, detail)?;
            Ok(())
        })
    }

    pub fn tokens(&self) -> Result<Vec<TokenInfo>, ControlError> {
        let txn = self.inner.db.begin_read().db("beginning a read")?;
        let table = txn.open_table(TOKENS).db("opening tokens")?;
        let records: Vec<TokenRecord> = read_all(&table, "tokens")?;
        let now = store::now_ms();
        let mut out: Vec<TokenInfo> = records
            .into_iter()
            .filter(|r| r.is_active(now))
            .map(|r| TokenInfo {
                name: r.name,
                role: r.role,
                created_at_ms: r.created_at_ms,
                expires_at_ms: r.expires_at_ms,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Revokes every token with this name. Bootstrap tokens are kept, marked revoked, so the
    /// same `STAMPEDE_ADMIN_TOKEN` at the next start does not bring them back.
    pub fn revoke_token(&self, actor: &Caller, name: &str) -> Result<(), ControlError> {
        self.mutate(|txn, _| {
            let mut table = txn.open_table(TOKENS).db("opening tokens")?;
            let mut doomed = Vec::new();
            for row in table.iter().db("iterating tokens")? {
                let (k, v) = row.db("reading a token")?;
                let record: TokenRecord = decode("tokens", "(hash)", v.value())?;
                if record.name == name && !record.revoked {
                    doomed.push((k.value().to_owned(), record));
                }
            }
            if doomed.is_empty() {
                return Err(not_found("token", name));
            }
            for (hash, mut record) in doomed {
                if name == "bootstrap" {
                    record.revoked = true;
                    table
                        .insert(hash.as_str(), encode(&record).as_slice())
                        .db("revoking a token")?;
                } else {
                    table.remove(hash.as_str()).db("removing a token")?;
                }
            }
            drop(table);
            audit::append(
                txn,
                &actor.name,
                "token.revoke",
                name,
                serde_json::Value::Null,
            )?;
            Ok(())
        })
    }
}
