-- A program's postal code is kept, for matching, as its key: upper case,
-- without spaces or hyphens (postalKey), so that "k1a 0b1", "K1A 0B1" and
-- "K1A0B1" are one place, as a town's name is in any case. The program's
-- address shows it as it was given; only the column that matches changes.
UPDATE programs SET postal_code = upper(regexp_replace(postal_code, '[[:space:]-]', '', 'g'))
WHERE postal_code <> upper(regexp_replace(postal_code, '[[:space:]-]', '', 'g'));
