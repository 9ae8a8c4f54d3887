-- Bodies stay in their row, compressed (STORAGE MAIN), rather than out of line in the TOAST
-- table: a compressed GitHub webhook (about 2 KB) then costs no second heap insert and TOAST
-- index entry on the commit path, only the compression. A body still larger than a page once
-- compressed goes out of line as before. Rows already stored keep their place.
ALTER TABLE events ALTER COLUMN body SET STORAGE MAIN;
ALTER TABLE deliveries ALTER COLUMN body SET STORAGE MAIN;
ALTER TABLE streamed ALTER COLUMN body SET STORAGE MAIN;
