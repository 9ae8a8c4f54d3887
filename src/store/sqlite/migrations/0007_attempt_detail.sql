-- What each attempt sent and what the agent answered (issue 30): the headers of both sides as
-- JSON (`detail`, see `deliver::exchange_detail`) and why the attempt was made (`cause`:
-- initial, scheduled, manual_retry, replay, decided when the attempt is recorded). A first
-- attempt that succeeded keeps its in the delivery's row, with the agent's answer, as its
-- status and duration are (0002). `origin` is 'replay' for deliveries made by a replay.
ALTER TABLE attempts ADD COLUMN cause TEXT;
ALTER TABLE attempts ADD COLUMN detail TEXT;
ALTER TABLE deliveries ADD COLUMN origin TEXT;
ALTER TABLE deliveries ADD COLUMN first_detail TEXT;
ALTER TABLE deliveries ADD COLUMN first_response_body TEXT;
