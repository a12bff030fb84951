"""``watchdogd demo``: a whole bad-deploy story with the real parts, and the app it deploys."""
