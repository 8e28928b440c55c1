-- The counts kept without an upsert, so that the writer's hot statements need no statement
-- journal.
--
-- Inside a transaction SQLite copies every page a statement changes to a statement journal
-- first, so that it can undo that statement alone, whenever the statement may write more
-- than one row (a trigger counts) and may abort halfway. The writer never needs that: any
-- failed statement rolls its whole batch back. Its hot statements say `OR FAIL` (a failure
-- stops the statement and keeps nothing it needs), but an upsert's `DO UPDATE`, here in the
-- triggers, always may abort. The copies were a fifth of the writer's time under load.
--
-- Every mode and status has its row from now on, so a trigger only has to add to it. The
-- statuses are the service's fixed set (`Status::ALL`; a test checks each has its row).
INSERT OR IGNORE INTO request_counts (mode, status, n)
    SELECT m.mode, s.status, 0
    FROM (SELECT 'sync' AS mode UNION ALL SELECT 'async') AS m,
         (SELECT 'pending' AS status UNION ALL SELECT 'processing' UNION ALL SELECT 'completed'
          UNION ALL SELECT 'failed' UNION ALL SELECT 'callback_pending'
          UNION ALL SELECT 'callback_success' UNION ALL SELECT 'callback_failed'
          UNION ALL SELECT 'cancelled') AS s;

DROP TRIGGER requests_counted_insert;
CREATE TRIGGER requests_counted_insert AFTER INSERT ON requests
BEGIN
    UPDATE request_counts SET n = n + 1 WHERE mode = NEW.mode AND status = NEW.status;
END;

DROP TRIGGER requests_counted_update;
CREATE TRIGGER requests_counted_update AFTER UPDATE OF mode, status ON requests
    WHEN OLD.mode IS NOT NEW.mode OR OLD.status IS NOT NEW.status
BEGIN
    UPDATE request_counts SET n = n - 1 WHERE mode = OLD.mode AND status = OLD.status;
    UPDATE request_counts SET n = n + 1 WHERE mode = NEW.mode AND status = NEW.status;
END;
