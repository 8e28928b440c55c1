-- The HTTP status of a request's last callback attempt (NULL when it got no answer): the
-- `last_status` list filter, by code (404) or class (4xx), one index each so that either
-- reads only its matches, newest first. Only answers that are not a success are indexed,
-- the ones an operator looks for (and the filter takes no other): a delivery that succeeds
-- adds nothing to them.
-- Read from the audit for the requests it can be a failure of (failed or still being
-- delivered): a delivered request's is a success, which nothing filters on, and leaving
-- those alone keeps the upgrade of a long history short.
ALTER TABLE requests ADD COLUMN callback_last_status INTEGER;
UPDATE requests
    SET callback_last_status = (SELECT status_code FROM delivery_attempts AS a
                                WHERE a.request_id = requests.id
                                ORDER BY a.attempt DESC LIMIT 1)
    WHERE callback_attempts > 0 AND status <> 'callback_success';
CREATE INDEX requests_last_status ON requests (callback_last_status, created_at)
    WHERE callback_last_status >= 300;
CREATE INDEX requests_last_status_class
    ON requests ((callback_last_status / 100), created_at)
    WHERE callback_last_status >= 300;
-- The requests with an error (a sync failure, or a callback's last error): searching that
-- text reads only these, in creation order, however many requests never failed.
CREATE INDEX requests_with_error ON requests (created_at)
    WHERE callback_last_error IS NOT NULL OR error IS NOT NULL;

-- The receiver's answer headers of each attempt, beside the start of its body.
ALTER TABLE delivery_attempts ADD COLUMN response_headers TEXT;
