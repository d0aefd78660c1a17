"""The pure core: functions of their inputs and a clock. No files, sockets or anyio in here."""
