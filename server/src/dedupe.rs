//! At-most-once effects for client requests. The outcome of each applied
//! request (client id, seq) is recorded in the same transaction as its change;
//! a repeat of the request gets the recorded outcome instead of a second
//! application. The table is bounded three ways: outcomes below a client's
//! `ack_below` are dropped, only the newest `WINDOW` seqs of a client are kept,
//! and only the `MAX_CLIENTS` most recently active clients are remembered.
//! Everything here is a deterministic function of the applied commands, so
//! every replica forgets the same records.

use crate::error::FsResult;
use crate::ops::{RecordedOutcome, RequestId};
use crate::store::META;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

const DEDUPE: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("dedupe");
/// client -> (last-use stamp, highest seq recorded)
const CLIENTS: TableDefinition<u128, (u64, u64)> = TableDefinition::new("dedupe_clients");
/// (last-use stamp, client): the eviction order.
const AGE: TableDefinition<(u64, u128), ()> = TableDefinition::new("dedupe_age");
/// `meta` key of the last-use stamp counter.
const META_CLOCK: &str = "dedupe_clock";

/// Seqs of one client kept below its highest.
pub const WINDOW: u64 = 1024;
/// Clients remembered at once.
pub const MAX_CLIENTS: u64 = 1024;

pub(crate) fn create_tables(txn: &WriteTransaction) -> FsResult<()> {
    txn.open_table(DEDUPE)?;
    txn.open_table(CLIENTS)?;
    txn.open_table(AGE)?;
    Ok(())
}

/// The recorded outcome of a request, if it was applied and is remembered.
pub(crate) fn recorded(
    txn: &WriteTransaction,
    req: &RequestId,
) -> FsResult<Option<RecordedOutcome>> {
    let table = txn.open_table(DEDUPE)?;
    let Some(v) = table.get((req.client, req.seq))? else {
        return Ok(None);
    };
    Ok(Some(prost::Message::decode(v.value())?))
}

/// Records the outcome of a request and forgets what may be forgotten.
pub(crate) fn record(
    txn: &WriteTransaction,
    req: &RequestId,
    outcome: &RecordedOutcome,
) -> FsResult<()> {
    let mut clients = txn.open_table(CLIENTS)?;
    let mut age = txn.open_table(AGE)?;
    let mut dedupe = txn.open_table(DEDUPE)?;
    let mut meta = txn.open_table(META)?;

    let stamp = meta.get(META_CLOCK)?.map(|v| v.value()).unwrap_or(0) + 1;
    meta.insert(META_CLOCK, stamp)?;

    let previous = clients.get(req.client)?.map(|v| v.value());
    let high = previous.map_or(req.seq, |(_, h)| h.max(req.seq));
    if let Some((old_stamp, _)) = previous {
        age.remove((old_stamp, req.client))?;
    }
    clients.insert(req.client, (stamp, high))?;
    age.insert((stamp, req.client), ())?;

    let floor = req.ack_below.max(high.saturating_sub(WINDOW));
    if req.seq >= floor {
        dedupe.insert(
            (req.client, req.seq),
            prost::Message::encode_to_vec(outcome).as_slice(),
        )?;
    }
    remove_range(&mut dedupe, req.client, 0, floor)?;

    while clients.len()? > MAX_CLIENTS {
        let Some((oldest_stamp, oldest)) = age.first()?.map(|(k, _)| k.value()) else {
            break;
        };
        age.remove((oldest_stamp, oldest))?;
        clients.remove(oldest)?;
        remove_range(&mut dedupe, oldest, 0, u64::MAX)?;
    }
    Ok(())
}

/// Removes the records of `client` with `from <= seq < to` (and seq u64::MAX when `to` is u64::MAX).
fn remove_range(
    table: &mut redb::Table<(u128, u64), &[u8]>,
    client: u128,
    from: u64,
    to: u64,
) -> FsResult<()> {
    if to == u64::MAX {
        table.retain_in((client, from)..=(client, u64::MAX), |_, _| false)?;
    } else if from < to {
        table.retain_in((client, from)..(client, to), |_, _| false)?;
    }
    Ok(())
}

/// Number of records held (for tests and diagnostics).
pub fn record_count(store: &crate::store::Store) -> FsResult<u64> {
    use redb::ReadableDatabase;
    let txn = store.db().begin_read()?;
    Ok(txn.open_table(DEDUPE)?.len()?)
}
