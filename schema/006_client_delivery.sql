-- 006_client_delivery.sql - schema version 6: what each client's messages
-- came to. delivered counts the stream messages of this client id that the
-- daemon stored (filed by its sequence accounting), delivered_seq is the
-- highest seq among them (0 while delivered is 0). Both are written in the
-- same transaction as those messages' rows, so they never count a message a
-- crash could still take back, and they hold across a daemon restart. A
-- client asks for them (the q_delivery query) to learn which of the messages
-- it sent arrived. Unlike the sequence state (last_seq, last_drop), a client
-- starting anew does not clear them: they cover the client id's whole life.
-- Clients from before this version start at 0.
ALTER TABLE clients ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clients ADD COLUMN delivered_seq INTEGER NOT NULL DEFAULT 0;
