"""The notification service: notifications to users in-app, by email and by webhook."""
