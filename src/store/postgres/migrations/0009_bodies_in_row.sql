-- Event and stream bodies stay in their row, compressed (STORAGE MAIN), rather than out of line
-- in the TOAST table: a compressed GitHub webhook (about 2 KB) then costs no second heap insert
-- and TOAST index entry on the commit path, only the compression. A body still larger than a
-- page once compressed goes out of line as before. Rows already stored keep their place.
-- Deliveries keep theirs out of line: their rows are updated at every attempt, and an update
-- copies what is in the row but only points again at what is out of line.
ALTER TABLE events ALTER COLUMN body SET STORAGE MAIN;
ALTER TABLE streamed ALTER COLUMN body SET STORAGE MAIN;
