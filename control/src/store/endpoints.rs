//! Discovery: the addresses each workload is reached at, registered by
//! its sidecar over mTLS. An address belongs to one identity at a time: a
//! registration naming an address another live identity holds is refused
//! whole. An entry lives as long as the SVID that registered it, and a
//! revoked SVID's entries are ignored.

use std::net::IpAddr;

use super::backend::Sql;
use super::{AuditEvent, Reason, Store, StoreError, insert_audit};

/// One address in the registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointRecord {
    pub address: IpAddr,
    /// Empty: every port.
    pub ports: Vec<u16>,
    pub spiffe_id: String,
    pub instance: String,
    pub expires_at: i64,
}

/// Who registers: the caller's verified identity and the SVID it used
/// (whose instance, recorded at issuance, names the registration).
#[derive(Debug, Clone)]
pub struct EndpointOwner<'a> {
    pub spiffe_id: &'a str,
    pub serial: &'a str,
}

/// The most live entries one identity may hold (its replicas' addresses).
pub const MAX_ENDPOINTS_PER_IDENTITY: i64 = 1024;

/// The live entries: not expired, their SVID not revoked; and the
/// service addresses an administrator set (no SVID: `serial` is empty).
/// A subquery, not a `LEFT JOIN`: with one, SQLite compiled the lookups
/// below again for every new `now` (see `issuance.rs`).
const LIVE: &str = "FROM endpoints e WHERE e.expires_at > ?1 AND (e.serial = '' OR \
                    EXISTS (SELECT 1 FROM svids s WHERE s.serial = e.serial AND s.revoked = 0))";

/// The live holder of address `?2` (its SPIFFE ID and serial).
fn live_holder_sql() -> String {
    format!("SELECT e.spiffe_id, e.serial {LIVE} AND e.address = ?2")
}

/// How many live entries SPIFFE ID `?2` holds.
fn live_count_sql() -> String {
    format!("SELECT COUNT(*) {LIVE} AND e.spiffe_id = ?2")
}

/// A service address never expires; an administrator removes it.
pub const SERVICE_EXPIRES_AT: i64 = i64::MAX;

/// The instance a service address is listed under: `service:<name>`.
pub const SERVICE_INSTANCE_PREFIX: &str = "service:";

fn ports_text(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_ports(text: &str) -> Result<Vec<u16>, StoreError> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse()
                .map_err(|_| StoreError::db(format!("stored port {p:?} is not a port"), false))
        })
        .collect()
}

impl Store {
    /// Replaces what `owner`'s instance registered with `addresses` and
    /// `ports`, valid until its SVID expires. Refused (and audited by the
    /// caller) when an address is held by another live identity, or the
    /// SVID is unknown or revoked.
    pub fn register_endpoints(
        &self,
        owner: &EndpointOwner<'_>,
        addresses: &[IpAddr],
        ports: &[u16],
        now: i64,
    ) -> Result<Vec<EndpointRecord>, StoreError> {
        let (records, event) = self.backend.tx(|sql| {
            let svid = sql.row(
                "SELECT expires_at, revoked, spiffe_id, instance FROM svids WHERE serial = ?1",
                &[owner.serial.into()],
            )?;
            let (expires_at, instance) = match svid {
                Some(row) if row.int(1)? == 0 && row.text(2)? == owner.spiffe_id => {
                    (row.int(0)?, row.text(3)?)
                }
                Some(_) => {
                    return Err(StoreError::refused(
                        Reason::SvidRevoked,
                        format!("SVID {} is revoked", owner.serial),
                    ));
                }
                None => {
                    return Err(StoreError::refused(
                        Reason::UnknownSvid,
                        format!("SVID {} was not issued here", owner.serial),
                    ));
                }
            };
            for address in addresses {
                let holder = sql.row(
                    &live_holder_sql(),
                    &[now.into(), address.to_string().into()],
                )?;
                if let Some(holder) = holder {
                    if holder.text(1)?.is_empty() {
                        return Err(StoreError::refused(
                            Reason::EndpointConflict,
                            format!("{address} is a service address an administrator set"),
                        ));
                    }
                    let holder = holder.text(0)?;
                    if holder != owner.spiffe_id {
                        return Err(StoreError::refused(
                            Reason::EndpointConflict,
                            format!("{address} is registered to {holder}, which is live"),
                        ));
                    }
                }
            }
            // This instance's earlier entries, and dead entries anywhere.
            sql.exec(
                "DELETE FROM endpoints WHERE serial <> '' AND ((spiffe_id = ?1 AND instance = ?2) OR expires_at <= ?3)",
                &[owner.spiffe_id.into(), instance.as_str().into(), now.into()],
            )?;
            let mut ports = ports.to_vec();
            ports.sort_unstable();
            ports.dedup();
            let ports = ports_text(&ports);
            let mut records = Vec::with_capacity(addresses.len());
            for address in addresses {
                // Held by this identity's other instance, or by a revoked SVID.
                put_row(
                    sql,
                    &Row {
                        address: *address,
                        spiffe_id: owner.spiffe_id,
                        instance: &instance,
                        serial: owner.serial,
                        ports: &ports,
                        expires_at,
                    },
                    now,
                )?;
                records.push(EndpointRecord {
                    address: *address,
                    ports: parse_ports(&ports)?,
                    spiffe_id: owner.spiffe_id.to_owned(),
                    instance: instance.clone(),
                    expires_at,
                });
            }
            let held = sql
                .row(
                    &live_count_sql(),
                    &[now.into(), owner.spiffe_id.into()],
                )?
                .map_or(Ok(0), |r| r.int(0))?;
            if held > MAX_ENDPOINTS_PER_IDENTITY {
                return Err(StoreError::refused(
                    Reason::BadEndpoint,
                    format!(
                        "{} would hold {held} addresses; at most {MAX_ENDPOINTS_PER_IDENTITY}",
                        owner.spiffe_id
                    ),
                ));
            }
            sql.exec("UPDATE endpoint_changes SET seq = seq + 1 WHERE id = 1", &[])?;
            let listed = addresses
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let event = AuditEvent::ok(
                "endpoints_register",
                Some(owner.spiffe_id),
                Some(owner.serial),
                owner.spiffe_id,
            )
            .with_detail(format!(
                "instance {instance:?}: addresses [{listed}], ports [{ports}]"
            ));
            insert_audit(sql, &event)?;
            Ok((records, event))
        })?;
        self.echo(&event);
        Ok(records)
    }

    /// Sets a service address (a Kubernetes Service's ClusterIP): a
    /// connection to it must reach `spiffe_id`, on `ports` (empty: every
    /// port). Replaces the service address's earlier entry; refused when a
    /// live workload holds the address. Audited as `by`.
    pub fn set_service_endpoint(
        &self,
        address: IpAddr,
        spiffe_id: &str,
        name: &str,
        ports: &[u16],
        by: &str,
        now: i64,
    ) -> Result<EndpointRecord, StoreError> {
        let (record, event) = self.backend.tx(|sql| {
            let holder = sql.row(
                &live_holder_sql(),
                &[now.into(), address.to_string().into()],
            )?;
            if let Some(holder) = holder
                && !holder.text(1)?.is_empty()
            {
                return Err(StoreError::refused(
                    Reason::EndpointConflict,
                    format!(
                        "{address} is a workload address of {}, which is live",
                        holder.text(0)?
                    ),
                ));
            }
            let mut ports = ports.to_vec();
            ports.sort_unstable();
            ports.dedup();
            let ports = ports_text(&ports);
            let instance = format!("{SERVICE_INSTANCE_PREFIX}{name}");
            put_row(
                sql,
                &Row {
                    address,
                    spiffe_id,
                    instance: &instance,
                    serial: "",
                    ports: &ports,
                    expires_at: SERVICE_EXPIRES_AT,
                },
                now,
            )?;
            sql.exec(
                "UPDATE endpoint_changes SET seq = seq + 1 WHERE id = 1",
                &[],
            )?;
            let event = AuditEvent::ok("service_endpoint_set", None, None, by).with_detail(
                format!("{address} ({instance}) must be {spiffe_id}, ports [{ports}]"),
            );
            insert_audit(sql, &event)?;
            Ok((
                EndpointRecord {
                    address,
                    ports: parse_ports(&ports)?,
                    spiffe_id: spiffe_id.to_owned(),
                    instance,
                    expires_at: SERVICE_EXPIRES_AT,
                },
                event,
            ))
        })?;
        self.echo(&event);
        Ok(record)
    }

    /// Removes a service address; false when there was none.
    pub fn remove_service_endpoint(&self, address: IpAddr, by: &str) -> Result<bool, StoreError> {
        let (removed, event) = self.backend.tx(|sql| {
            let removed = sql.exec(
                "DELETE FROM endpoints WHERE address = ?1 AND serial = ''",
                &[address.to_string().into()],
            )?;
            if removed == 0 {
                return Ok((false, None));
            }
            sql.exec(
                "UPDATE endpoint_changes SET seq = seq + 1 WHERE id = 1",
                &[],
            )?;
            let event = AuditEvent::ok("service_endpoint_remove", None, None, by)
                .with_detail(format!("{address}"));
            insert_audit(sql, &event)?;
            Ok((true, Some(event)))
        })?;
        if let Some(event) = event {
            self.echo(&event);
        }
        Ok(removed)
    }

    /// The live registry, by address, and its mark.
    pub fn endpoints(&self, now: i64) -> Result<(String, Vec<EndpointRecord>), StoreError> {
        self.backend.tx(|sql| {
            let mark = endpoints_mark(sql, now)?;
            let rows = sql.rows(
                &format!(
                    "SELECT e.address, e.ports, e.spiffe_id, e.instance, e.expires_at {LIVE} ORDER BY e.address"
                ),
                &[now.into()],
            )?;
            let mut records = Vec::with_capacity(rows.len());
            for row in rows {
                let address = row.text(0)?;
                records.push(EndpointRecord {
                    address: address.parse().map_err(|_| {
                        StoreError::db(format!("stored address {address:?} is not an IP"), false)
                    })?,
                    ports: parse_ports(&row.text(1)?)?,
                    spiffe_id: row.text(2)?,
                    instance: row.text(3)?,
                    expires_at: row.int(4)?,
                });
            }
            Ok((mark, records))
        })
    }
}

/// One row of the registry as stored (`serial` empty for a service address).
struct Row<'a> {
    address: IpAddr,
    spiffe_id: &'a str,
    instance: &'a str,
    serial: &'a str,
    ports: &'a str,
    expires_at: i64,
}

/// Puts `row` in place of whatever held its address.
fn put_row(sql: &mut dyn Sql, row: &Row<'_>, now: i64) -> Result<(), StoreError> {
    sql.exec(
        "DELETE FROM endpoints WHERE address = ?1",
        &[row.address.to_string().into()],
    )?;
    sql.exec(
        "INSERT INTO endpoints (address, spiffe_id, instance, serial, ports, expires_at, registered_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[
            row.address.to_string().into(),
            row.spiffe_id.into(),
            row.instance.into(),
            row.serial.into(),
            row.ports.into(),
            row.expires_at.into(),
            now.into(),
        ],
    )?;
    Ok(())
}

/// Changes whenever the live registry does: with every registration, and
/// when an entry expires or its SVID is revoked (the live count).
pub(super) fn endpoints_mark(sql: &mut dyn Sql, now: i64) -> Result<String, StoreError> {
    let seq = sql
        .row("SELECT seq FROM endpoint_changes WHERE id = 1", &[])?
        .map_or(Ok(0), |r| r.int(0))?;
    let live = sql
        .row(&format!("SELECT COUNT(*) {LIVE}"), &[now.into()])?
        .map_or(Ok(0), |r| r.int(0))?;
    Ok(format!("{seq}.{live}"))
}

#[cfg(test)]
mod tests {
    use super::{LIVE, live_count_sql, live_holder_sql};

    #[test]
    fn live_lookups_are_compiled_once() {
        for sql in [
            live_holder_sql(),
            live_count_sql(),
            format!("SELECT COUNT(*) {LIVE}"),
        ] {
            let params = sql.matches('?').count();
            crate::store::assert_compiled_once(&sql, |now| {
                (0..params)
                    .map(|i| match i {
                        0 => now.into(),
                        _ => format!("spiffe://example.org/{now}").into(),
                    })
                    .collect()
            });
        }
    }
}
