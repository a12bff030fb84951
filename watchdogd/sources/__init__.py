"""Sources: everything watchdogd looks at."""
