//! Query plans, for the tests that hold the store's queries to the indexes they were written for
//! (a plan that reads a whole table passes every functional test and slows with the data).

use crate::Store;

/// SQLite's query plan of `sql` (its `params` parameters left NULL): one line per step.
pub(crate) async fn sqlite_plan(sql: &str, params: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let store = Store::connect(&url).await.unwrap();
    let explain = format!("EXPLAIN QUERY PLAN {sql}");
    let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
    for _ in 0..params {
        q = q.bind(None::<i64>);
    }
    let plan = q.fetch_all(&store.pool).await.unwrap();
    plan.into_iter().map(|(.., detail)| detail).collect()
}

/// `sql`'s plans on PostgreSQL, run with the literal `args` (`EXPLAIN ANALYZE`: a plain
/// `EXPLAIN` leaves out a recursive step's lookups) and rolled back: the plan for those values,
/// and the generic plan that a prepared statement switches to after five runs.
pub(crate) async fn pg_plans(
    store: &Store,
    sql: &str,
    args: &str,
) -> Vec<(&'static str, Vec<String>)> {
    let mut plans = Vec::new();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        let mut conn = store.pool.acquire().await.unwrap();
        let prepare = format!("SET plan_cache_mode = {mode}; PREPARE probe AS {sql}");
        sqlx::raw_sql(&prepare).execute(&mut *conn).await.unwrap();
        let explain =
            format!("BEGIN; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE probe({args})");
        let plan = sqlx::raw_sql(&explain)
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|row| sqlx::Row::get(row, 0))
            .collect();
        sqlx::raw_sql("ROLLBACK; DEALLOCATE probe; RESET plan_cache_mode")
            .execute(&mut *conn)
            .await
            .unwrap();
        plans.push((mode, plan));
    }
    plans
}

/// A throwaway PostgreSQL whose `table` holds what `fill` inserts or updates, with autovacuum off
/// on it: autovacuum would gather statistics at any moment, and [`pg_plans_both_ways`] looks at
/// the plans both without and with them.
pub(crate) async fn pg_filled(table: &str, fill: &[&str]) -> (testkit::PgCluster, Store) {
    let cluster = testkit::PgCluster::start();
    let store = Store::connect(&cluster.url()).await.unwrap();
    let off = format!("ALTER TABLE {table} SET (autovacuum_enabled = false)");
    for sql in std::iter::once(off.as_str()).chain(fill.iter().copied()) {
        sqlx::query(sql).execute(&store.pool).await.unwrap();
    }
    (cluster, store)
}

/// [`pg_plans`] on `table` with its statistics never gathered, then after `ANALYZE`, each plan
/// with a label saying which it is.
pub(crate) async fn pg_plans_both_ways(
    store: &Store,
    table: &str,
    sql: &str,
    args: &str,
) -> Vec<(String, Vec<String>)> {
    let mut plans = Vec::new();
    for analyzed in [false, true] {
        if analyzed {
            sqlx::query(&format!("ANALYZE {table}"))
                .execute(&store.pool)
                .await
                .unwrap();
        }
        for (mode, plan) in pg_plans(store, sql, args).await {
            plans.push((format!("analyzed {analyzed}, {mode}"), plan));
        }
    }
    plans
}

/// The largest number a PostgreSQL plan (`EXPLAIN ANALYZE`) gives after `label`, such as
/// `"actual rows="`, over all its lines.
pub(crate) fn plan_most(plan: &[String], label: &str) -> u64 {
    plan.iter()
        .filter_map(|l| l.split(label).nth(1))
        .filter_map(|n| {
            n.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

/// The lines of `plan` that contain `s`.
pub(crate) fn plan_count(plan: &[String], s: &str) -> usize {
    plan.iter().filter(|l| l.contains(s)).count()
}
