-- Fleet store schema, version 5: a shared block carries the name the sharing host resolved
-- its address from (enrich/names.rs), so a host that takes the block can show it although it
-- never saw the answer. Informational: not part of what an operator signs; a receiving host
-- takes it only in the names' strict form. Applied only by `sentinel fleet init`.

ALTER TABLE fleet_shared_blocks
    ADD COLUMN domain text CHECK (length(domain) <= 1024);

GRANT INSERT (domain), UPDATE (domain) ON fleet_shared_blocks TO sentinel_host;
