"""What happens to a watched deployment, from a sample to a finished rollback.

Layered bottom-up; each module imports only those above it in this list:
``report`` (one call reports an event everywhere), ``tasks`` (named,
supervised tasks), ``world`` (the config as running: rules compiled, policies
resolved) and ``live`` (open deployments and their rule states), then
``execution`` (one claim, the plan, its outcome), ``proposals`` (propose, join,
timers, dry run), then ``evaluation``, ``operators`` and ``deployments``, and
``leadership`` on top. ``watchdogd.daemon`` wires them.
"""
