"""The backend-neutral runtime: prompt building, generation, scheduling, scoring, wiring."""
