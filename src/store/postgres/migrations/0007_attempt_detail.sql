-- What each attempt sent and what the agent answered (issue 30): the headers of both sides as
-- JSON text (`detail`, see `deliver::exchange_detail`) and why the attempt was made (`cause`:
-- initial, scheduled, manual_retry, replay, decided when the attempt is recorded). A first
-- attempt that succeeded keeps its in the delivery's row, with the agent's answer, as its
-- status and duration are (0002). `origin` is 'replay' for deliveries made by a replay.
ALTER TABLE attempts
    ADD COLUMN IF NOT EXISTS cause text,
    ADD COLUMN IF NOT EXISTS detail text;
ALTER TABLE deliveries
    ADD COLUMN IF NOT EXISTS origin text,
    ADD COLUMN IF NOT EXISTS first_detail text,
    ADD COLUMN IF NOT EXISTS first_response_body text;
