-- The checker's own reads. It reads tables directly and never trusts the pipeline's log.


-- name: snapshot_all
-- Every pipeline table in one statement: one round trip, one consistent snapshot.
SELECT ARRAY(SELECT d FROM documents AS d) AS documents,
       ARRAY(SELECT j FROM upload_jobs AS j) AS jobs,
       ARRAY(SELECT c FROM document_chunk_buffer AS c ORDER BY c.document_id, c.chunk_ord)
           AS chunk_buffer,
       ARRAY(SELECT v FROM document_vector_buffer AS v ORDER BY v.document_id, v.chunk_id)
           AS vector_buffer,
       ARRAY(SELECT f FROM document_chunks AS f ORDER BY f.document_id, f.chunk_ord)
           AS final_chunks;
