"""Query intelligence: which statements cost the time, what runs now and what it waits on."""
